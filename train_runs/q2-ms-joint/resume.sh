#!/usr/bin/env bash
# Start or resume q2-ms-joint: every part of semarc-h10s (semarc-h10c with means, its entropy model retrained on
# the corpus: train_runs/semarc-h10s) trained jointly on the corpus's train split (82 photos) with mixed
# quantisation at h10c's last joint loss (lambda 0.0006, LPIPS weight 0.3), the schedule of semarc-h05s (1,400
# steps, learning rate 1e-4 dropping tenfold at step 1150). Run from the project's root, venv active, the corpus
# built by `semarc corpus ~/.cache/semarc/corpus`, after train_runs/semarc-h10s/resume.sh (its export,
# the shipped checkpoint, is the init). One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-ms-joint --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init codec/weights/semarc-h10s.pt --lmbda 0.0006 \
  --lpips-weight 0.3 --lr 1e-4 --steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q2-ms-joint/q2-ms-joint.pt "$@"
