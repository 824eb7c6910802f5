#!/usr/bin/env bash
# Start or resume q2-99-g3b: q2-99-g3 (q2-99-hold with three synthesis blocks grown in, 600 steps) continued 1200
# more steps at the same loss (lambda 0.000716, LPIPS-Alex 0.614), learning rate 1e-4 dropping tenfold at step
# 1000, the corpus sampled as q2-99-lp-b's chain sampled it, channels-last, the validation split evaluated every
# 600 steps. Its control is train_runs/q2-99-hold3/resume.sh (q2-99-hold2, the same run without the blocks,
# continued the same way); the two run side by side, one thread each.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`, after
# train_runs/q2-99-g3/resume.sh. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-g3b --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --synthesis-blocks 3 --init train_runs/q2-99-g3/q2-99-g3.pt \
  --lmbda 0.000716 --lpips-weight 0.614 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 \
  --threads 1 --eval-every 600 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-g3b/q2-99-g3b.pt "$@"
