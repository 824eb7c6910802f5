#!/usr/bin/env bash
# Start or resume semarc-h05s: every part of semarc-h05s-ent (semarc-h05c with means, its entropy model
# retrained on the corpus) trained jointly on the corpus's train split (82 photos) with mixed quantisation at
# h05c's last joint loss (lambda 0.00015, LPIPS weight 0.09), 1,400 steps, learning rate 1e-4 dropping tenfold
# at step 1150. Run from the project's root, venv active, the corpus built by `semarc corpus
# ~/.cache/semarc/corpus`, after train_runs/semarc-h05s-ent/resume.sh (its export is the init). One CPU thread. Stop it with kill PID; run this again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/semarc-h05s --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/semarc-h05s-ent/semarc-h05s-ent.pt --lmbda 0.00015 \
  --lpips-weight 0.09 --lr 1e-4 --steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export codec/weights/semarc-h05s.pt "$@"
