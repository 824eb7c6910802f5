#!/usr/bin/env bash
# Start or resume q1-dec-lp: the synthesis g_s of semarc-h05s alone, on the rounded latents of the corpus's train
# split, with LPIPS-Alex weighted 3.3x more than in semarc-h05s's loss (0.3 against 0.09, the same lambda). The
# encoder and entropy model are frozen, so the bytes stay semarc-h05s's: the run measures how much LPIPS a
# decoder buys for a given loss of PSNR at fixed bytes. Run from the project's root, venv active, the corpus
# built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this again to resume.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-dec-lp --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part decoder --hyper-input rounded --means hyper --init codec/weights/semarc-h05s.pt --lmbda 0.00015 \
  --lpips-weight 0.3 --lr 1e-4 --steps 1000 --lr-drop-step 800 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-dec-lp/q1-dec-lp.pt "$@"
