#!/usr/bin/env bash
# Build what scripts/gpu_session.sh carries to a lent GPU machine (the device
# tool sends at most 64 MiB, and ../shared does not travel):
#   .dev/photos  the 49 training photos as JPEG q90 4:4:4 (19 MB; PSNR vs the PNGs ~38-41 dB)
#   .dev/xin     the crossdevice inputs (semarc bench crossdevice --prepare)
#   .dev/cache   the converted LPIPS-Alex weights (SEMARC_CACHE)
#   .whl         compressai 1.2.8 (cp312) and pytorch-msssim wheels
# Both folders are in .git/info/exclude. Run in the repo root with semarc installed.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
mkdir -p .git/info .dev/photos .dev/cache/lpips .whl
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || echo "/.dev/" >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python - "$SHARED" <<'PY'
import glob, os, sys
from PIL import Image
for p in sorted(glob.glob(os.path.join(sys.argv[1], "photos", "*.png"))):
    Image.open(p).convert("RGB").save(f".dev/photos/{os.path.basename(p)[:-4]}.jpg", quality=90, subsampling=0)
PY
semarc bench crossdevice --prepare .dev/xin --shared "$SHARED"
python -c "from semarc.codec import metrics; metrics.load_lpips_state_dict()"
cp "${SEMARC_CACHE:-$HOME/.cache/semarc}"/lpips/*.pt .dev/cache/lpips/
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl compressai==1.2.8
python -m pip download -q --no-deps -d .whl pytorch-msssim==1.0.0
du -sh .dev .whl
