#!/usr/bin/env bash
# Start or resume q2-99-hold3: q2-99-hold2 continued 1200 more steps at its loss (lambda 0.000716, LPIPS-Alex
# 0.614), learning rate 1e-4 dropping tenfold at step 1000, the corpus sampled as q2-99-lp-b's chain sampled it,
# channels-last, the validation split evaluated every 600 steps: the control of q2-99-g3b (the same run with three
# synthesis blocks); the two run side by side, one thread each.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`, after
# train_runs/q2-99-hold2/resume.sh. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-hold3 --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-99-hold2/q2-99-hold2.pt \
  --lmbda 0.000716 --lpips-weight 0.614 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 \
  --threads 1 --eval-every 600 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-hold3/q2-99-hold3.pt "$@"
