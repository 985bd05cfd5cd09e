#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (a bare `torch` would pull GBs of CUDA wheels), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# setuptools warns on every editable install that a folder named like the package could shadow it
# (the checkout's own img2cq/ is the package itself): silenced, for this command only
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -e ".[dev,postgres,cluster]"
