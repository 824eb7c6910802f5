#!/usr/bin/env bash
# Start or resume q2-98-ph: q2-99-ph continued with both loss weights x0.97 (lambda 0.000747, LPIPS-Alex 0.64), to
# spend about its starting point's bytes: 300 steps, learning rate 1e-4 dropping tenfold at step 250, the photographs
# drawn twice as often, channels-last (docs/training.md), the validation split evaluated at the end.
# Run from the project's root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`.
# Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-98-ph --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-99-ph/q2-99-ph.pt --lmbda 0.000747 \
  --lpips-weight 0.64 --lr 1e-4 --steps 300 --lr-drop-step 250 --log-every 25 --save-every 25 --threads 2 \
  --eval-every 300 --eval-max-side 768 --channels-last \
  --corpus ~/.cache/semarc/corpus --oversample shared-photos=2,skimage=2 \
  --export train_runs/q2-98-ph/q2-98-ph.pt "$@"
