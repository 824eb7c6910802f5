#!/usr/bin/env bash
# Start or resume q2-99-ph: q2-99-lp-b's loss (lambda 0.00077, LPIPS-Alex 0.66) from its exported point, on the
# corpus's train split with its photographs drawn twice as often (shared-photos, skimage) instead of the wallpapers:
# 900 steps, learning rate 1e-4 dropping tenfold at step 750, the validation split evaluated every 300 steps.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-ph --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-99-lp-b/q2-99-lp-b.pt --lmbda 0.00077 \
  --lpips-weight 0.66 --lr 1e-4 --steps 900 --lr-drop-step 750 --log-every 25 --save-every 25 --threads 2 \
  --eval-every 300 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample shared-photos=2,skimage=2 \
  --export train_runs/q2-99-ph/q2-99-ph.pt "$@"
