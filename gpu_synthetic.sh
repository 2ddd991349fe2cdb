#!/usr/bin/env bash
# The larger DPDNet from synthesize.py's scenes (preset synthetic_gpu: base 32, depth 4, 256x256 patches), trained
# on one GPU under Keras on JAX: synthesize.py (every CPU core), data_prep.py, a two-epoch probe of the step time,
# train.py for as many of the preset's epochs as fit in TRAIN_SECONDS (default 240), test.py on its own test split.
# Planned to take about 8 minutes on one H200. What comes back fits the device tool's limits (8 files of 16 MiB):
# OUT/timeline.txt, OUT/run.tgz (logs, config, training log, test summary) and the weights in 15 MiB parts
# (cat OUT/best.keras.part* > best.keras). The out-of-distribution check then runs on any machine
# (pretrained/README.md).
#
# Usage: ./gpu_synthetic.sh [OUT_DIR]     (default: results/gpu_synthetic; $OUT when set, as on the device tool)
#        TINY=1 ./gpu_synthetic.sh DIR    a few scenes and steps, to check the script on a CPU (minutes)
#        PHOTOS=DIR ./gpu_synthetic.sh   your own sharp photographs as the scenes' photographs (synthesize.py --photos)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-${OUT:-results/gpu_synthetic}}
LOGS=$(mktemp -d /tmp/dpdnet_logs.XXXX)
source ./gpu_steps.sh
RUN="$WORK/ckpt/synthetic_gpu"
DATA="--preset synthetic_gpu --set dataset_root=$WORK/synthetic_gpu --set patch_dir=$WORK/patches \
--set checkpoint_dir=$WORK/ckpt"
SCENES="--train 1200 --val 20 --test 20"
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
if [ "${TINY:-0}" = 1 ]; then   # the same commands at toy size
  SCENES="--train 6 --val 2 --test 2"
  DATA="$DATA --set epochs=2 --set steps_per_epoch=3 --set checkpoint_every_steps=3 --set precision=float32"
fi

pack() {  # on every exit, also a failed one: whatever the run has made so far goes to OUT
  for f in config.json log.csv best.json; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$LOGS/"; done
  [ -f "$LOGS/test/summary.md" ] && cp "$LOGS/test/summary.md" "$LOGS/test_summary.md"
  tar czf "$OUT/run.tgz" -C "$LOGS" --exclude test . || true
  [ -f "$RUN/best.keras" ] && split -b 15M -d "$RUN/best.keras" "$OUT/best.keras.part"
  rm -rf "$WORK" "$LOGS"
}
trap pack EXIT

step synthesize $PY synthesize.py --out "$WORK/synthetic_gpu" $SCENES --width 640 --height 416 --max-coc 40 \
  --seed 0 --soft-content 0.3 --test-soft-content 0.3 --workers "$CPUS" --no-progress ${PHOTOS:+--photos "$PHOTOS"}
step data_prep $PY data_prep.py $DATA --set data_workers="$CPUS"
# Two epochs time this machine's step; the run then trains as many of the preset's epochs as fit in TRAIN_SECONDS
# (demo.epochs_that_fit, which allows for two networks' start-up: one here, so it errs short; the decay moves with
# the epochs). timeout's 124: the time ran out, and the best checkpoint so far stands.
step probe $PY train.py $DATA --set loader_workers=8 --set epochs=2 --set run_name=probe --fresh
FIT=""
if [ "${TINY:-0}" != 1 ]; then
  FIT=$($PY -c "
import csv, demo
from config import make_config
cfg = make_config('synthetic_gpu')
rate = float(list(csv.DictReader(open('$WORK/ckpt/probe/log.csv')))[-1]['patches_per_s'])
epochs, decay = demo.epochs_that_fit(cfg.epochs, cfg.lr_decay_every, cfg.steps_per_epoch, $TRAIN_SECONDS,
                                     cfg.batch_size / rate)
print(f'--set epochs={epochs} --set lr_decay_every={decay}')" | tail -1) || FIT="--set epochs=20 --set lr_decay_every=13"
fi
echo "training settings fitted to $TRAIN_SECONDS s: ${FIT:-as in the preset}" | tee -a "$OUT/timeline.txt"
step train timeout $((TRAIN_SECONDS + 60)) $PY train.py $DATA --set loader_workers=8 $FIT --fresh || [ $? = 124 ]
step test $PY test.py --weights "$RUN/best.keras" $DATA --no-lpips --out "$LOGS/test"
echo "done: $OUT/timeline.txt" | tee -a "$OUT/timeline.txt"
