#!/usr/bin/env bash
# Start or resume q1-46-lp: semarc-h05s trained further, jointly, toward the top of the q1 rate band (<= 0.05 bpp
# on Kodak) with LPIPS-Alex weighted 2.8x as heavily (0.25; lambda 0.00017 against h05s's 0.00015), where the
# q1 point's PSNR (23.4 dB on Kodak against a 23.0 floor) and its rate leave room. Wallpaper packages drawn twice
# as often, as q1-ms-4k. 1,000 steps, learning rate 1e-4 dropping tenfold at step 850, the validation split
# evaluated every 300 steps in the run. Run from the project's root, venv active, the corpus built by
# `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume exactly.
# Stopped at step 350: at step 300 its validation rate was short of the band's top; q1-46-lp2 continues from its
# step-300 checkpoint with a higher lambda.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-46-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h05s.pt --lmbda 0.00017 \
  --lpips-weight 0.25 --lr 1e-4 --steps 1000 --lr-drop-step 850 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 300 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q1-46-lp/q1-46-lp.pt "$@"
