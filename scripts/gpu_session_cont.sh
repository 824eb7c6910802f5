#!/usr/bin/env bash
# Session 5's second, short lent-GPU call: the shipped factorized points
# p06/p11 trained further (all weights from the checkpoint, fresh optimiser)
# at lower lambdas, to land on <= 0.05 and <= 0.10 bpp; beside them a
# hyperprior trained from scratch (MSE), a diagnostic for the hyperprior runs
# of scripts/gpu_session_hyper.sh. Carry .dev and .whl.
set -u
T=${T:-3.3}; D=${D:-2.8}; DEV=${DEV:-cuda}; PY=${PY:-python3}
. scripts/gpu_env.sh
export SEMARC_CACHE=$PWD/.dev/cache
S="$PY -P -m semarc.cli"
R=${R:-/tmp/runs}; mkdir -p $R $OUT/ckpt
CROP=${CROP:-256}; BATCH=${BATCH:-8}
run() {  # name arch init lambda lpips_weight lr export
  $S train-codec --run $R/$1 --arch $2 --N 128 --M 192 --batch $BATCH --crop $CROP --device $DEV --threads 2 \
    --steps 1000000 --log-every 100 --save-every 2000 --photos ".dev/photos/*.jpg" ${3:+--init codec/weights/$3.pt} \
    --lmbda $4 --lpips-weight $5 --lr $6 --max-minutes $T --drop-after-minutes $D ${7:+--export $OUT/ckpt/semarc-$1.pt} > $R/$1.out 2>&1
  echo "$1 rc=$?"; grep -v -i warn $R/$1.out | tail -n 2
}
run c05a factorized semarc-p06 0.000105 0.28 1e-4 1 &
run c05b factorized semarc-p06 0.00009 0.24 1e-4 1 &
run c10a factorized semarc-p11 0.00034 0.51 1e-4 1 &
run c10b factorized semarc-p11 0.0003 0.45 1e-4 1 &
run hs05 hyperprior "" 0.0003 0 5e-4 "" &
wait
for n in c05a c05b c10a c10b hs05; do mkdir -p $R/logs/$n; cp $R/$n/log.jsonl $R/$n/config.json $R/logs/$n/ 2>/dev/null; grep -v -i warn $R/$n.out | tail -n 20 > $R/logs/$n/console_tail.txt; done
tar czf $OUT/logs.tgz -C $R logs
ls -la $OUT $OUT/ckpt
