#!/usr/bin/env bash
# Train the shipped model on the GPU machine (H100, 16 cores) from streamed procedural samples.
#
# One GPU-machine command runs at most 10 minutes, so this script is one *step* of the run:
# repeat the same command until it prints "export ready". Each call trains for --max-minutes
# (start-up included), checkpoints, and stops; the next call resumes from the checkpoint with new
# samples. Once --max-steps is reached it exports bf16 weights cut into <= 15 MiB pieces under
# $OUT/model, which come back with the command; here: python scripts/export_model.py --join DIR.
#
# Before the first call, CadQuery must be installed there (../shared/device/README.md):
# ../shared/device/pack.sh here, then `bash .device/cK/step.sh` there for each piece.
# Checkpoints live on that machine only (about 0.4 GB with the optimiser state): all calls of one
# run must land on the same warm machine, i.e. within one device session.
set -euo pipefail
cd "$(dirname "$0")/.."
source /tmp/device-env.sh

MODEL_DIR=${MODEL_DIR:-models/compact-stream}   # on the GPU machine; git-ignored
MAX_STEPS=${MAX_STEPS:-4000}                    # fixes the cosine schedule: keep it across calls
MAX_MINUTES=${MAX_MINUTES:-8}                   # leaves 2 of the 10 minutes to save and export
OUT=${OUT:-/tmp/gpu_train_out}
mkdir -p "$OUT"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >> "$OUT/gpu_util.csv" &
SMI=$!
trap 'kill $SMI' EXIT

# the recipe is configs/gpu_stream.json; the flags after it win
python3 enhanced_train.py configs/gpu_stream.json --max-steps "$MAX_STEPS" --max-minutes "$MAX_MINUTES" \
    --output-dir "$MODEL_DIR"

cp "$MODEL_DIR/logs/train_log.csv" "$OUT/train_log.csv"
if python3 -c "import json, sys; sys.exit(not json.load(open('$MODEL_DIR/training_config.json'))['finished'])"; then
    python3 scripts/export_model.py "$MODEL_DIR" "$OUT/model" --split-mib 15
    echo "export ready: $OUT/model"
else
    echo "not finished: run this command again to resume"
fi
