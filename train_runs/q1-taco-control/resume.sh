#!/usr/bin/env bash
# Start or resume the no-text control of ../q1-taco: the same encoder-side training of semarc-h05c (same init,
# data, crops, steps and rates) without text adapters. Run from the project's root, venv active. One CPU thread.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-taco-control --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part encoder --hyper-input rounded --init codec/weights/semarc-h05c.pt --lmbda 0.00015 --lpips-weight 0.09 \
  --lr 5e-5 --steps 500 --lr-drop-step 500 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-taco-control/q1-taco-control.pt "$@"
