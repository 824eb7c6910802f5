#!/usr/bin/env bash
# Start or resume q2-99-c384: q2-99-lp-b continued at its own loss (lambda 0.00077, LPIPS-Alex 0.66) on 384-pixel
# crops, 4 per batch (about the pixels of 8 crops of 256), so that each crop holds larger smooth regions in context:
# Kodak's lowest LPIPS margins are its smooth photographs. 2000 steps, learning rate 1e-4 dropping tenfold at step
# 1700, the corpus sampled as q2-99-lp-b's chain sampled it, channels-last (docs/training.md), the validation split
# evaluated every 500 steps.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-c384 --arch checkerboard --N 128 --M 192 --batch 4 --crop 384 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-99-lp-b/q2-99-lp-b.pt --lmbda 0.00077 \
  --lpips-weight 0.66 --lr 1e-4 --steps 2000 --lr-drop-step 1700 --log-every 25 --save-every 25 --threads 2 \
  --eval-every 500 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-c384/q2-99-c384.pt "$@"
