#!/usr/bin/env bash
# Start or resume q2-99-fb1: q2-99-lp-b with one residual block grown into its synthesis transform at 1/4 of the
# image's side (--fine-synthesis-blocks 1; it starts as the identity), every part jointly, 1200 steps at q2-99-lp-b's
# own loss (lambda 0.00077, LPIPS-Alex 0.66), learning rate 1e-4 dropping tenfold at step 1000, the corpus sampled as
# q2-99-lp-b's chain sampled it, channels-last, the validation split evaluated every 600 steps. Its control is
# train_runs/q2-99-cont/resume.sh: the same run without the block.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-fb1 --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --fine-synthesis-blocks 1 \
  --init train_runs/q2-99-lp-b/q2-99-lp-b.pt \
  --lmbda 0.00077 --lpips-weight 0.66 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 \
  --threads 2 --eval-every 600 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-fb1/q2-99-fb1.pt "$@"
