#!/usr/bin/env bash
# Start or resume the q1 joint run (exact resume from state.pt; run from the project's root, venv active,
# the corpus built by `semarc corpus ~/.cache/semarc/corpus`). One CPU thread. Stop it with kill PID.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-joint --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --init codec/weights/semarc-h05c.pt --lmbda 0.00015 --lpips-weight 0.09 \
  --lr 5e-5 --steps 100000 --log-every 50 --save-every 50 --threads 1 --corpus ~/.cache/semarc/corpus \
  --eval-every 1000
