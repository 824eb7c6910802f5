#!/usr/bin/env bash
# Start or resume q2-joint with a larger LPIPS weight (0.5, from 0.3): every part of semarc-h10c
# trained on the corpus's train split (82 photos) with mixed quantisation, lambda 0.0006; the same schedule as
# q2-joint (1,400 steps, the learning rate dropping tenfold at step 1150). Run from the project's root, venv
# active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID;
# run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-joint-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --init codec/weights/semarc-h10c.pt --lmbda 0.0006 --lpips-weight 0.5 \
  --lr 1e-4 --steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q2-joint-lp/q2-joint-lp.pt "$@"
