#!/usr/bin/env bash
# Start or resume q1-ms-joint: every part of q1-ms-ent (semarc-h05c with means, its entropy model retrained on
# the corpus: train_runs/q1-ms-ent) trained jointly on the corpus's train split (82 photos) with mixed
# quantisation at h05c's last joint loss (lambda 0.00015, LPIPS weight 0.09), the schedule of q1-joint (1,400
# steps, learning rate 1e-4 dropping tenfold at step 1150): q1-joint with means. Run from the project's root,
# venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`, after train_runs/q1-ms-ent/resume.sh
# (its export is the init). One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-ms-joint --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q1-ms-ent/q1-ms-ent.pt --lmbda 0.00015 \
  --lpips-weight 0.09 --lr 1e-4 --steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-ms-joint/q1-ms-joint.pt "$@"
