#!/usr/bin/env bash
# Start or resume q1-48-lp: semarc-h10s (0.081 bpp on Kodak) trained further, jointly, on the corpus's train split
# at a lower lambda (0.00025, against the 0.0006 its transforms were trained at) with its LPIPS-Alex weight (0.3),
# to land near 0.05 bpp: is a point at the top of q1's allowed rate (<= 0.05 bpp) with twice q1's ratio of LPIPS
# weight to lambda nearer the 0.30 LPIPS-Alex target than semarc-h05s's line to semarc-h10s? Mixed quantisation,
# 2,000 steps, learning rate 1e-4 dropping tenfold at step 1700. Run from the project's root, venv active, the
# corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to
# resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-48-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h10s.pt --lmbda 0.00025 \
  --lpips-weight 0.3 --lr 1e-4 --steps 2000 --lr-drop-step 1700 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-48-lp/q1-48-lp.pt "$@"
