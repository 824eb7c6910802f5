#!/usr/bin/env bash
# Start or resume q2-95-lp-b: q2-95-lp's command (train_runs/q2-95-lp/resume.sh) in a new run folder, on another
# machine: semarc-h10s trained further, jointly, with LPIPS-Alex 0.5 and lambda 0.0006, wallpaper packages drawn
# twice as often. Run with --steps 300: q2-95-lp2-b starts from its step-300 checkpoint. The same seed draws the
# same crops; CPU training is reproducible in distribution, not bit for bit, across machines (the step-25 loss is
# 0.35972 here against 0.3596 in q2-95-lp). Run from the project's root, venv active, the corpus built by
# `semarc corpus ~/.cache/semarc/corpus`. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-95-lp-b --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h10s.pt --lmbda 0.0006 \
  --lpips-weight 0.5 --lr 1e-4 --steps 1000 --lr-drop-step 850 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 300 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-95-lp-b/q2-95-lp-b.pt "$@"
