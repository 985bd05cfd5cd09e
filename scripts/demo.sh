#!/usr/bin/env bash
# The main job on the embedded default, end to end on a CPU in a few minutes:
#   synthetic GenCAD-style test images (a seed the shipped model never saw) -> the shipped model
#   writes a program per image, greedily and then with test-time search (its proposals and the
#   shipped part library's nearest parts rendered, the one whose render agrees best with the
#   picture kept and refined) -> programs run in the sandbox -> VSR / IoU -> rows appended to
#   results.csv next to the baselines -> a short table.
# Settings: DEMO_SAMPLES (default 50), DEMO_MODEL (default the shipped model), DEMO_DIR (runs/demo),
# DEMO_CANDIDATES / DEMO_SHORTLIST / DEMO_REFINE (search: 4 model proposals, 32 library parts, 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow
DEMO=${DEMO_DIR:-runs/demo}
SAMPLES=${DEMO_SAMPLES:-50}
MODEL=${DEMO_MODEL:-models/img2cq-cpu}

# test images from seed 1000 (the shipped model trained on seed 7, the part library is seed 2026),
# plus 200 training samples for the nearest-training-image baseline; rerunning reuses them
python scripts/download_hf_dataset.py --source synthetic --out "$DEMO/data" --train 200 --test "$SAMPLES" \
  --seed 1000 --workers 2 --no-progress
python baseline_eval.py "$SAMPLES" --eval-json "$DEMO/data/test.jsonl" --train-json "$DEMO/data/train.jsonl"
started=$(date +%s)
python enhanced_eval.py "$MODEL" --samples "$SAMPLES" --eval-json "$DEMO/data/test.jsonl" --batch-size 16
echo "model, greedy: $SAMPLES images generated, run and scored in $(( $(date +%s) - started )) s"
started=$(date +%s)
python enhanced_eval.py "$MODEL" --samples "$SAMPLES" --eval-json "$DEMO/data/test.jsonl" --batch-size 16 \
  --candidates "${DEMO_CANDIDATES:-4}" --shortlist "${DEMO_SHORTLIST:-32}" --refine "${DEMO_REFINE:-1}"
echo "model, test-time search: $SAMPLES images searched, run and scored in $(( $(date +%s) - started )) s"
echo
echo "results.csv (last 5 rows: constant box, nearest training image, nearest library part, the shipped model"
echo "greedy, with search):"
tail -n 5 results.csv | cut -d, -f1-7 | column -t -s,
