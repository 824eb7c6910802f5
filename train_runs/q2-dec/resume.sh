#!/usr/bin/env bash
# Start or resume the decoder-only fine-tuning of semarc-h10c on the corpus's train split (82 photos): the
# synthesis g_s alone on the rounded latents, so the bytes stay h10c's; the distortion loss of h10c's last joint
# stage. Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# One CPU thread. Stop it with kill PID.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-dec --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part decoder --hyper-input rounded --init codec/weights/semarc-h10c.pt --lmbda 0.0006 --lpips-weight 0.3 \
  --lr 1e-4 --steps 1000 --lr-drop-step 800 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q2-dec/q2-dec.pt "$@"
