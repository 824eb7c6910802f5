#!/usr/bin/env bash
# Start or resume q2-99-lpt: q2-95-lp2's exported point (train_runs/q2-95-lp2/q2-95-lp2.pt: 0.0798 bpp on the
# validation split, 0.094-0.095 bpp on Kodak) trained further, jointly, with lambda 0.0007 unchanged and the
# LPIPS-Alex weight raised from 0.6 to 0.8: the rest of the q2 band (<= 0.10 bpp on Kodak) spent on the
# perceptual term alone, beside q2-99-lp (both weights x1.1). 350 steps, learning rate 1e-4 dropping tenfold at
# step 300, the validation split evaluated every 175 steps in the run. Run from the project's root, venv active,
# the corpus built by `semarc corpus ~/.cache/semarc/corpus`. One CPU thread. Stop it with kill PID; run this
# again to resume exactly.
set -euo pipefail
exec semarc train-codec --run train_runs/q2-99-lpt --arch checkerboard --N 128 --M 192 --batch 8 --crop 256 \
  --quant mixed --hyper-input rounded --means hyper --init train_runs/q2-95-lp2/q2-95-lp2.pt --lmbda 0.0007 \
  --lpips-weight 0.8 --lr 1e-4 --steps 350 --lr-drop-step 300 --log-every 25 --save-every 25 --threads 1 \
  --eval-every 175 --eval-max-side 768 \
  --corpus ~/.cache/semarc/corpus --oversample lxqt-themes=2,mate-backgrounds=2,plasma-workspace-wallpapers=2 \
  --export train_runs/q2-99-lpt/q2-99-lpt.pt "$@"
