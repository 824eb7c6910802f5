#!/usr/bin/env bash
# Start or resume q2-95-lp: semarc-h10s trained further, jointly, toward the top of the q2 rate band (<= 0.10 bpp
# on Kodak) with LPIPS-Alex weighted 1.7x as heavily (0.5; lambda 0.0006 as h10s), where the q2 point's PSNR
# (25.4 dB on Kodak against a 25.0 floor) and its rate leave room. Wallpaper packages drawn twice as often.
# 1,000 steps, learning rate 1e-4 dropping tenfold at step 850, the validation split evaluated every 300 steps in
# the run. Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# One CPU thread. Stop it with kill PID; run this again to resume exactly.
# Stopped at step 350: at step 300 its validation rate was short of the band's top; q2-95-lp2 continues from its
# step-300 checkpoint with a higher lambda.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-95-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h10s.pt --lmbda 0.0006 \
  --lpips-weight 0.5 --lr 1e-4 --steps 1000 --lr-drop-step 850 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 300 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-95-lp/q2-95-lp.pt "$@"
