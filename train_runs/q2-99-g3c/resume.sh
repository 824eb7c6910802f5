#!/usr/bin/env bash
# Start or resume q2-99-g3c: q2-99-g3b (three synthesis blocks, 1800 steps after they were grown in) continued
# 1000 more steps at the same loss (lambda 0.000716, LPIPS-Alex 0.614), learning rate 1e-4 dropping tenfold at
# step 800, the corpus sampled as q2-99-lp-b's chain sampled it, channels-last, the validation split evaluated
# every 500 steps: the control of train_runs/q2-99-g6/resume.sh (the same run with three more blocks grown in);
# the two run side by side, one thread each.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`, after
# train_runs/q2-99-g3b/resume.sh. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-g3c --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --synthesis-blocks 3 --init train_runs/q2-99-g3b/q2-99-g3b.pt \
  --lmbda 0.000716 --lpips-weight 0.614 --lr 1e-4 --steps 1000 --lr-drop-step 800 --log-every 25 --save-every 25 \
  --threads 1 --eval-every 500 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-g3c/q2-99-g3c.pt "$@"
