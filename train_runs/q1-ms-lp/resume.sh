#!/usr/bin/env bash
# Start or resume q1-ms-lp: semarc-h05s trained further, jointly, on the corpus's train split with twice its
# LPIPS-Alex weight (0.18) and a lower lambda (0.00011, against 0.00015) so that the bytes stay near q1's: does
# the perceptual weight buy LPIPS at the same rate, where doubling it at the same lambda (q1-joint-lp) only moved
# along the zoo's rate-quality slope? Mixed quantisation, 1,400 steps, learning rate 1e-4 dropping tenfold at
# step 1150. Run from the project's root, venv active, the corpus built by `semarc corpus
# ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-ms-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h05s.pt --lmbda 0.00011 \
  --lpips-weight 0.18 --lr 1e-4 --steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-ms-lp/q1-ms-lp.pt "$@"
