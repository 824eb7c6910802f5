#!/usr/bin/env bash
# Start or resume q1-ms-4k (q1-ms-long restarted: its state stayed on the machine that trained it): semarc-h05s trained further, jointly, at its own loss (lambda 0.00015, LPIPS-Alex
# 0.09), for 4,000 steps, with the wallpaper packages' train photos drawn twice as often (51% of the crops): more
# steps on the corpus, where q1-ms-wall's 1,200 steps at three times gave the same bytes with +0.07 dB, LPIPS-VGG
# -2.2% and DISTS -0.8% on the validation split but LPIPS-Alex +0.2%. Mixed quantisation, learning rate 1e-4
# dropping tenfold at step 3600; several working days on one CPU thread. Run from the project's root, venv active,
# the corpus built by `semarc corpus ~/.cache/semarc/corpus`. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-ms-4k --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h05s.pt --lmbda 0.00015 \
  --lpips-weight 0.09 --lr 1e-4 --steps 4000 --lr-drop-step 3600 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q1-ms-4k/q1-ms-4k.pt "$@"
