#!/usr/bin/env bash
# Start or resume the decoder-only fine-tuning of semarc-h05c on the corpus's train split (82 photos): the
# synthesis g_s alone on the rounded latents, so the bytes stay h05c's. The no-adversarial control of ../q1-adv
# (same init, data, crops, steps and loss but the adversarial term). Run from the project's root, venv active,
# the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-dec --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part decoder --hyper-input rounded --init codec/weights/semarc-h05c.pt --lmbda 0.00015 --lpips-weight 0.09 \
  --lr 1e-4 --steps 1000 --lr-drop-step 800 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-dec/q1-dec.pt "$@"
