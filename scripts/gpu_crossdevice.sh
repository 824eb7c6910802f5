#!/usr/bin/env bash
# The cross-device check alone on a lent GPU machine (device tool `run`,
# carry .dev/xin and .whl; see scripts/prepare_gpu_carry.sh). Then, here:
#   semarc bench crossdevice --inputs .dev/xin --against <fetched files> --out bench/results
. scripts/gpu_env.sh
python3 -P -m semarc.cli bench crossdevice --inputs .dev/xin --device cuda --out $OUT 2>&1 | grep -v -i warn | tail -n 30; ls -la $OUT
