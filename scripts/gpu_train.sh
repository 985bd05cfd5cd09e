#!/usr/bin/env bash
# One step of a GPU run from streamed procedural samples, for machines whose commands are
# time-limited: each call trains for MAX_MINUTES (start-up included), checkpoints and stops; the same
# command resumes with new samples until it prints "export ready". Once MAX_STEPS is reached it
# exports bf16 weights cut into <= 15 MiB pieces under $OUT/model (join them with
# python scripts/export_model.py --join DIR). CadQuery must be installed there first, and the
# checkpoints (about 0.4 GB with the optimiser state) stay on that machine: all steps of one run
# belong to one machine. DEVICE_ENV names a file to source first (e.g. the CadQuery environment).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${DEVICE_ENV:-}" ] && source "$DEVICE_ENV"

CONFIG=${CONFIG:-configs/gpu_stream.json}       # the recipe (configs/gpu_edit_stream.json: retrieve-and-edit)
MODEL_DIR=${MODEL_DIR:-models/compact-stream}   # on the GPU machine; git-ignored
MAX_STEPS=${MAX_STEPS:-4000}                    # fixes the cosine schedule: keep it across calls
MAX_MINUTES=${MAX_MINUTES:-8}                   # leaves 2 of the 10 minutes to save and export
OUT=${OUT:-/tmp/gpu_train_out}
mkdir -p "$OUT"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >> "$OUT/gpu_util.csv" &
SMI=$!
trap 'kill $SMI' EXIT

# the recipe is $CONFIG (default configs/gpu_stream.json); the flags after it win
python3 enhanced_train.py "$CONFIG" --max-steps "$MAX_STEPS" --max-minutes "$MAX_MINUTES" \
    --output-dir "$MODEL_DIR"

cp "$MODEL_DIR/logs/train_log.csv" "$OUT/train_log.csv"
if python3 -c "import json, sys; sys.exit(not json.load(open('$MODEL_DIR/training_config.json'))['finished'])"; then
    python3 scripts/export_model.py "$MODEL_DIR" "$OUT/model" --split-mib 15
    echo "export ready: $OUT/model"
else
    echo "not finished: run this command again to resume"
fi
