#!/usr/bin/env bash
# Create .venv beside this file and install requirements.txt (and the development tools) into it.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools<81" wheel
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q -r requirements-dev.txt   # pytest and ruff (development tools)
echo "ready: .venv/bin/python run_single_img.py --help"
