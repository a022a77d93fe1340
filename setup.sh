#!/usr/bin/env bash
# Create .venv beside this file and install requirements.txt into it.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools<81" wheel
.venv/bin/python -m pip install -q -r requirements.txt
echo "ready: .venv/bin/python run_single_img.py --help"
