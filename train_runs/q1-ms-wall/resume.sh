#!/usr/bin/env bash
# Start or resume q1-ms-wall: semarc-h05s trained further, jointly, with its own loss (lambda 0.00015, LPIPS-Alex
# 0.09), drawing the corpus's three wallpaper packages' train photos three times as often as the others (61% of the
# crops instead of 34%): semarc-h05s is furthest behind the classical codecs in PSNR on smooth, dark wallpapers;
# does more of them close that without costing the photographs? Mixed quantisation, 1,200 steps, learning rate
# 1e-4 dropping tenfold at step 1000. Run from the project's root, venv active, the corpus built by
# `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-ms-wall --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h05s.pt --lmbda 0.00015 \
  --lpips-weight 0.09 --lr 1e-4 --steps 1200 --lr-drop-step 1000 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=3,mate-backgrounds=3,plasma-workspace-wallpapers=3 \
  --export train_runs/q1-ms-wall/q1-ms-wall.pt "$@"
