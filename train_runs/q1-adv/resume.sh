#!/usr/bin/env bash
# Start or resume the decoder-only adversarial fine-tuning of semarc-h05c: g_s alone on the rounded latents (the
# bytes stay h05c's), trained against a conditional PatchGAN (train/adversarial.py) with weight 0.015 (HiFiC's
# ratio of adversarial to LPIPS weight), after 100 steps of the discriminator alone. Its control without the
# adversarial term is ../q1-dec (same init, data, crops, steps and distortion loss). Run from the project's root,
# venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-adv --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part decoder --hyper-input rounded --init codec/weights/semarc-h05c.pt --lmbda 0.00015 --lpips-weight 0.09 \
  --adv-weight 0.015 --adv-warmup 100 --disc-lr 1e-4 \
  --lr 1e-4 --steps 1000 --lr-drop-step 800 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-adv/q1-adv.pt "$@"
