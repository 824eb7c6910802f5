#!/usr/bin/env bash
# Start or resume q2-99-m768: q2-99-lp-b continued at its own loss (lambda 0.00077, LPIPS-Alex 0.66) on the corpus
# photos downscaled as the validation split is benched (--max-side 768: every source's whole scene at most 768 pixels
# across, as the validation split and Kodak show them), crops drawn at a scale in [0.6, 1] of those pixels. 1200
# steps, learning rate 1e-4 dropping tenfold at step 1000, the corpus sampled as q2-99-lp-b's chain sampled it,
# channels-last (docs/training.md), the validation split evaluated every 600 steps.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-m768 --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --max-side 768 --min-crop-scale 0.6 --quant mixed --hyper-input rounded --means hyper \
  --init train_runs/q2-99-lp-b/q2-99-lp-b.pt \
  --lmbda 0.00077 --lpips-weight 0.66 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 \
  --threads 2 --eval-every 600 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-m768/q2-99-m768.pt "$@"
