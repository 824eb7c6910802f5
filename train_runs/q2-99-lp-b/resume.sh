#!/usr/bin/env bash
# Start or resume q2-99-lp-b: q2-99-lp's command (train_runs/q2-99-lp/resume.sh) from q2-95-lp2-b's exported point:
# lambda 0.00077 and LPIPS-Alex 0.66 (both weights x1.1), 350 steps, learning rate 1e-4 dropping tenfold at step
# 300, the validation split evaluated every 175 steps. Run from the project's root, venv active, the corpus built
# by `semarc corpus ~/.cache/semarc/corpus`. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-lp-b --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-95-lp2-b/q2-95-lp2-b.pt --lmbda 0.00077 \
  --lpips-weight 0.66 --lr 1e-4 --steps 350 --lr-drop-step 300 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 175 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-lp-b/q2-99-lp-b.pt "$@"
