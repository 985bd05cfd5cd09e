#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow
python -m pytest -q -p no:cacheprovider "$@"
