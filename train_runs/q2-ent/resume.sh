#!/usr/bin/env bash
# Start or resume q2-ent, the control of semarc-h10s (its means stage): semarc-h10c's entropy model (hyper-transforms, context)
# retrained without means on the latents of the corpus's train split (82 photos, whole, at scales 1 and 0.6;
# 12x12 windows), the transforms kept: the exact rate of the rounded symbols, learning rate 1e-4 dropping
# tenfold at step 1600 of 2000. Run from the project's root, venv active, the corpus built by
# `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-ent --arch checkerboard --N 128 --M 192 --batch 16 --crop 192 \
  --train-part entropy --entropy-data latents --hyper-input rounded \
  --init codec/weights/semarc-h10c.pt --lr 1e-4 --steps 2000 --lr-drop-step 1600 \
  --log-every 50 --save-every 100 --threads 1 --corpus ~/.cache/semarc/corpus \
  --export train_runs/q2-ent/q2-ent.pt "$@"
