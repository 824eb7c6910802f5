#!/usr/bin/env bash
# One lent-GPU session (the device tool's `run`, H100): the cross-device check
# and four image-codec training runs side by side on the one GPU.
#   carry: .whl (compressai cp312 + pytorch-msssim wheels), .dev (photos as
#   JPEG q90 4:4:4, the crossdevice inputs, the converted LPIPS cache), both
#   built by scripts/prepare_gpu_carry.sh.
# MSE phase T1 minutes (lr drop after D1), then LPIPS fine-tuning T2 minutes
# (lr drop after D2) from the exported MSE point. Outputs under $OUT.
set -u
T1=${T1:-4.5}; D1=${D1:-3.8}; T2=${T2:-2.0}; D2=${D2:-1.7}; DEV=${DEV:-cuda}; PY=${PY:-python3}
. scripts/gpu_env.sh
export SEMARC_CACHE=$PWD/.dev/cache
[ "$DEV" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, compressai, transformers, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'compressai', compressai.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)" || exit 1
S="$PY -P -m semarc.cli"
R=${R:-/tmp/runs}; mkdir -p $R $OUT
point() {  # name mse_lambda ft_lambda lpips_weight
  local c="--N 128 --M 192 --batch 8 --crop 256 --device $DEV --threads 2 --steps 1000000 --log-every 100 --save-every 2000"
  $S train-codec --run $R/$1-mse $c --photos ".dev/photos/*.jpg" --lmbda $2 --max-minutes $T1 --drop-after-minutes $D1 --export $R/$1-mse.pt > $R/$1-mse.out 2>&1
  $S train-codec --run $R/$1-p $c --photos ".dev/photos/*.jpg" --init $R/$1-mse.pt --lmbda $3 --lpips-weight $4 --lr 1e-4 --max-minutes $T2 --drop-after-minutes $D2 --export $R/$1-p.pt > $R/$1-p.out 2>&1
  tail -n 2 $R/$1-mse/log.jsonl $R/$1-p/log.jsonl
}
point g05a 0.0003 0.00015 0.4 &
point g05b 0.0004 0.0002 0.3 &
point g10a 0.0009 0.0004 0.6 &
point g10b 0.0012 0.0005 0.5 &
$S bench crossdevice --inputs .dev/xin --device $DEV --out $OUT/xside > $R/crossdevice.out 2>&1; echo "crossdevice rc=$?"; tail -n 3 $R/crossdevice.out
sleep 45; grep -h steps_per_s $R/*-mse.out | tail -n 4
wait
$PY -P - <<PY | tee $R/eval.jsonl
import glob, json, numpy as np
from semarc.codec.image import ImageCoder
from semarc.codec.imageio import read_image
from semarc.codec import metrics
imgs = [read_image(open(p, "rb").read()) for p in sorted(glob.glob(".dev/xin/images/*.png"))]
for ck in sorted(glob.glob("$R/*.pt")):
    c = ImageCoder(ck, device="$DEV")
    coded = c.encode_batch(imgs)
    back = c.decode_batch([(x.payload, x.check) for x in coded])
    r = {"ckpt": ck.split("/")[-1], "bpp": float(np.mean([metrics.bpp(len(x.payload) + 3, a.shape[0] * a.shape[1]) for x, a in zip(coded, imgs)])),
         "psnr": float(np.mean([metrics.psnr(a, b) for a, b in zip(imgs, back)])),
         "lpips": float(np.mean([metrics.lpips(a, b) for a, b in zip(imgs, back)]))}
    print(json.dumps(r))
PY
cd $R && for n in g05a g05b g10a g10b; do tar czf $OUT/$n.tgz $n-mse.pt $n-p.pt $n-mse/log.jsonl $n-mse/config.json $n-p/log.jsonl $n-p/config.json $n-mse.out $n-p.out 2>/dev/null; done
tar czf $OUT/logs.tgz eval.jsonl crossdevice.out
ls -la $OUT $OUT/xside
