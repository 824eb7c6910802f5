#!/usr/bin/env bash
# Start or resume semarc-h05s-ent: semarc-h05c's entropy model retrained with means (--means hyper) on the latents of
# the corpus's train split (82 photos, whole, at scales 1 and 0.6; 12x12 windows). The transforms stay h05c's;
# the hyper-transforms, context, means head (h_m) and signed hyper-input (h_sign) learn the exact rate of the
# rounded symbols (the means through the noise proxy; train/trainer.py entropy_loss). The means start at zero;
# the new parts train at 1e-3, the rest at 1e-4, dropping tenfold at step 1600 of 2000. Run from the project's
# root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with
# kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/semarc-h05s-ent --arch checkerboard --N 128 --M 192 --batch 16 --crop 192 \
  --train-part entropy --entropy-data latents --hyper-input rounded --means hyper \
  --init codec/weights/semarc-h05c.pt --lr 1e-4 --lr-fresh 1e-3 --steps 2000 --lr-drop-step 1600 \
  --log-every 50 --save-every 100 --threads 1 --corpus ~/.cache/semarc/corpus \
  --export train_runs/semarc-h05s-ent/semarc-h05s-ent.pt "$@"
