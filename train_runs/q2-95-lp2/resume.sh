#!/usr/bin/env bash
# Start or resume q2-95-lp2: q2-95-lp's weights at step 300 (its in-run validation checkpoint,
# train_runs/q2-95-lp/eval/step-0000300.pt: 0.0755 bpp on the validation split, short of the rate it aimed at)
# trained further, jointly, with lambda 0.0007 and LPIPS-Alex 0.6 (the same ratio of LPIPS to MSE weight), to
# reach the top of the q2 band (<= 0.10 bpp on Kodak). 700 steps, learning rate 1e-4 dropping tenfold at step 600,
# the validation split evaluated every 350 steps in the run. Run from the project's root, venv active, the corpus
# built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume
# exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-95-lp2 --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-95-lp/eval/step-0000300.pt --lmbda 0.0007 \
  --lpips-weight 0.6 --lr 1e-4 --steps 700 --lr-drop-step 600 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 350 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-95-lp2/q2-95-lp2.pt "$@"
