#!/usr/bin/env bash
# Start or resume q2-95-lp2-b: q2-95-lp2's command (train_runs/q2-95-lp2/resume.sh) from q2-95-lp-b's step-300
# checkpoint (train_runs/q2-95-lp-b/eval/step-0000300.pt): lambda 0.0007, LPIPS-Alex 0.6, 700 steps, learning rate
# 1e-4 dropping tenfold at step 600, the validation split evaluated every 350 steps. Run from the project's root,
# venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`. Stop it with kill PID; run this again to
# resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-95-lp2-b --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-95-lp-b/eval/step-0000300.pt --lmbda 0.0007 \
  --lpips-weight 0.6 --lr 1e-4 --steps 700 --lr-drop-step 600 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 350 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-95-lp2-b/q2-95-lp2-b.pt "$@"
