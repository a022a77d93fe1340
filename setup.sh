#!/usr/bin/env bash
# Create .venv beside this file, install the pinned requirements and the development tools into it,
# then this checkout itself (editable: `import zsiqa` and the `zsiqa` command see your edits).
# The checkout is built with the venv's own setuptools (--no-build-isolation), so no download is needed.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q -r requirements-dev.txt   # pytest and ruff (development tools)
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "ready: .venv/bin/zsiqa --help   (or .venv/bin/python run_single_img.py --help)"
