#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (a bare `torch` would pull GBs of CUDA wheels), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,postgres,cluster]"
