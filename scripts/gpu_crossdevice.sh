#!/usr/bin/env bash
# The cross-device check alone on a lent GPU machine (device tool `run`,
# carry .dev/xin and .whl; see scripts/prepare_gpu_carry.sh). Then, here:
#   semarc bench crossdevice --inputs .dev/xin --against <fetched files> --out bench/results
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg/semarc && cp semarc/*.py /tmp/pkg/semarc/
for d in codec workers jobs cluster bench; do ln -sfn "$PWD/$d" /tmp/pkg/semarc/$d; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
python3 -P -m semarc.cli bench crossdevice --inputs .dev/xin --device cuda --out $OUT 2>&1 | grep -v -i warn | tail -n 30; ls -la $OUT
