#!/usr/bin/env bash
# The whole pipeline on one GPU, as a user runs it, under Keras on JAX: synthesize a DPDD-shaped set at
# 1680x1120, data_prep.py (paper preset), train.py (paper preset, mixed_bfloat16, a few minutes), test.py on
# its test split, then bench.py (inference, the bare training step beside train.py's own loader and loop).
# Every command, its wall time and peak GPU memory go to OUT/timeline.txt; logs and results next to it.
# Planned to take under 10 minutes on one H100.
#
# Usage: ./gpu_pipeline.sh [OUT_DIR]        (default: results/gpu_pipeline; $OUT when set, as on the device tool)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-${OUT:-results/gpu_pipeline}}
source ./gpu_steps.sh
DATA="--set dataset_root=$WORK/dpdd --set patch_dir=$WORK/patches --set checkpoint_dir=$WORK/ckpt"

# 16 train scenes x 20 kept paper patches = 320 patches (64 steps of batch 5 per epoch), 2 val, 8 test scenes.
step synthesize $PY synthesize.py --out "$WORK/dpdd" --train 16 --val 2 --test 8 --width 1680 --height 1120 \
  --workers "$CPUS" --no-progress
step data_prep $PY data_prep.py $DATA --set data_workers="$CPUS"
step train $PY train.py $DATA --set precision=mixed_bfloat16 --set epochs=4 --set loader_workers=8 \
  --set run_name=gpu_pipeline --fresh
cp "$WORK/ckpt/gpu_pipeline/log.csv" "$OUT/train_log.csv"
cp "$WORK/ckpt/gpu_pipeline/last.json" "$OUT/train_last.json"
step test $PY test.py --weights "$WORK/ckpt/gpu_pipeline/last.keras" $DATA --set precision=mixed_bfloat16 \
  --no-lpips --out "$OUT/test"
step bench $PY bench.py --backends jax --precisions float32,mixed_bfloat16 --sections network,data \
  --parts infer,train,loader,loop --out "$OUT/bench"
rm -rf "$WORK"
echo "done: $OUT/timeline.txt"
