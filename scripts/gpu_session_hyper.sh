#!/usr/bin/env bash
# Session 5's lent-GPU run (device tool `run`, H100): four scale-hyperprior
# rate points trained side by side on the one GPU, each starting from the
# transforms (g_a/g_s) of a shipped factorized point, with the joint
# MSE + LPIPS-Alex loss from the first step (the transforms are already
# perceptually tuned; only the hyper-transforms and entropy model start fresh).
# Beside them, the cross-device check for captions (prefill encoder) and the
# shipped points; after them, the cross-device check for the new points.
#   carry: .whl and .dev, built by scripts/prepare_gpu_carry.sh.
# T minutes of training per run, learning rate dropped tenfold after D.
# Outputs under $OUT: the four exported checkpoints (ckpt/) and rest.tgz
# (both cross-device sides, the run logs).
set -u
XIN=${XIN:-.dev/xin}; T=${T:-6.5}; D=${D:-5.5}; DEV=${DEV:-cuda}; PY=${PY:-python3}
. scripts/gpu_env.sh
export SEMARC_CACHE=$PWD/.dev/cache
[ "$DEV" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, compressai, transformers, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'compressai', compressai.__version__, 'numpy', numpy.__version__)" || exit 1
S="$PY -P -m semarc.cli"
R=${R:-/tmp/runs}; mkdir -p $R $OUT/ckpt
CROP=${CROP:-256}; BATCH=${BATCH:-8}
point() {  # name init lambda lpips_weight
  $S train-codec --run $R/$1 --arch hyperprior --N 128 --M 192 --batch $BATCH --crop $CROP --device $DEV --threads 2 \
    --steps 1000000 --log-every 100 --save-every 2000 --photos ".dev/photos/*.jpg" --init codec/weights/$2.pt \
    --lmbda $3 --lpips-weight $4 --lr 2e-4 --max-minutes $T --drop-after-minutes $D \
    --export $OUT/ckpt/semarc-$1.pt > $R/$1.out 2>&1
  echo "$1 rc=$?"; grep -v -i warn $R/$1.out | tail -n 2
}
point h05a semarc-p06 0.00012 0.35 &
point h05b semarc-p06 0.0001 0.3 &
point h10a semarc-p11 0.0004 0.6 &
point h10b semarc-p11 0.00033 0.5 &
$S bench crossdevice --inputs $XIN --device $DEV --points semarc-p06,semarc-p11,semarc-f1 --out $OUT/xside > $R/crossdevice.out 2>&1
echo "crossdevice rc=$?"; grep -v -i warn $R/crossdevice.out | tail -n 3
sleep 30; grep -h steps_per_s $R/*.out | tail -n 4
wait
cp $OUT/ckpt/*.pt codec/weights/ 2>/dev/null
P=$(cd $OUT/ckpt && ls *.pt 2>/dev/null | sed 's/\.pt$//' | paste -sd,)
[ -n "$P" ] && $S bench crossdevice --inputs $XIN --device $DEV --images-only --points "$P" --out $OUT/xside2 > $R/crossdevice2.out 2>&1
echo "crossdevice2 rc=$?"; grep -v -i warn $R/crossdevice2.out | tail -n 3
for n in h05a h05b h10a h10b; do mkdir -p $R/logs/$n; cp $R/$n/log.jsonl $R/$n/config.json $R/logs/$n/ 2>/dev/null; grep -v -i warn $R/$n.out | tail -n 20 > $R/logs/$n/console_tail.txt; done
cp $R/crossdevice*.out $R/logs/ 2>/dev/null
# at most 8 files come back: the four checkpoints and one archive of the rest
tar czf $OUT/rest.tgz -C $OUT xside xside2 -C $R logs && rm -rf $OUT/xside $OUT/xside2
ls -la $OUT $OUT/ckpt
