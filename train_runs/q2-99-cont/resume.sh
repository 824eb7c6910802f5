#!/usr/bin/env bash
# Start or resume q2-99-cont: q2-99-lp-b continued at its own loss (lambda 0.00077, LPIPS-Alex 0.66) with nothing else
# changed (crops drawn at the default scales, [0.35, 1], of the photos as stored): the control for q2-99-s1, q2-99-s06
# and q2-99-m768, which are this run with one crop option changed. 1200 steps, learning rate 1e-4 dropping tenfold at
# step 1000, the corpus sampled as q2-99-lp-b's chain sampled it, channels-last (docs/training.md), the validation
# split evaluated every 600 steps.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-cont --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-99-lp-b/q2-99-lp-b.pt \
  --lmbda 0.00077 --lpips-weight 0.66 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 \
  --threads 2 --eval-every 600 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-cont/q2-99-cont.pt "$@"
