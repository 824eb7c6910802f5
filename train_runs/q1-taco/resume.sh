#!/usr/bin/env bash
# Start or resume the q1 text-guided run (TACO): the encoder side of semarc-h05c (analysis, hyper-analysis) plus
# two text adapters reading MiniLM-L6 token embeddings of each photo's caption; decoder and entropy model frozen.
# Its no-text control is ../q1-taco-control (same init, data, crops, steps and rates). Run from the project's
# root, venv active, the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread.
set -euo pipefail
exec semarc train-codec --run train_runs/q1-taco --arch text-checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --train-part encoder --hyper-input rounded --init codec/weights/semarc-h05c.pt --lmbda 0.00015 --lpips-weight 0.09 \
  --lr 5e-5 --lr-fresh 1e-3 --steps 500 --lr-drop-step 500 --log-every 25 --save-every 25 --threads 1 \
  --corpus ~/.cache/semarc/corpus --export train_runs/q1-taco/q1-taco.pt "$@"
