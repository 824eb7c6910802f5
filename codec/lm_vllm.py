"""vLLM as a top-k next-token provider for the ``vllm`` caption profile
(``codec/caption_topk.py``). Needs the ``vllm`` extra and a GPU.

Written against vLLM's offline API: ``vllm.LLM(model=..., max_logprobs=k,
logprobs_mode="raw_logprobs", enable_prefix_caching=False, seed=...)`` and
``LLM.generate([TokensPrompt(prompt_token_ids=...)], SamplingParams(max_tokens=1,
temperature=0.0, logprobs=k))``; each output's ``outputs[0].logprobs[0]`` maps
token id -> ``Logprob(logprob, rank, ...)``. ``VLLM_BATCH_INVARIANT=1`` (set
here before the engine starts, unless the user set it) asks for kernels whose
results do not depend on the batch (vLLM docs, "Batch Invariance": NVIDIA GPUs
of compute capability >= 8.0 in recent versions). Prefix caching is off so a
request is computed the same way whether or not a previous one shared its
prefix. The decode conditions recorded in the profile: vLLM and torch versions,
GPU name and compute capability, dtype, batch invariance, k, the engine settings.
"""

from __future__ import annotations

import os

from .lm import HFTokens, tokenizer_sha256


def available() -> tuple[bool, str]:
    """(usable, reason): vLLM importable and a CUDA GPU present."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a CUDA/torch mismatch at import
        return False, f"vllm is not importable ({type(e).__name__}: {e}); install the vllm extra on a GPU machine"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU: vLLM's caption profile needs one"
    return True, ""


class VllmTopK(HFTokens):
    backend = "vllm"

    def __init__(self, model: str, k: int = 20, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 seed: int = 0, max_model_len: int = 2048, batch_invariant: bool = True) -> None:
        ok, why = available()
        if not ok:
            raise RuntimeError(why)
        if batch_invariant:
            os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        import vllm
        from vllm import LLM, SamplingParams

        self.model_name, self.k, self.dtype = model, k, dtype
        self.settings = {"max_logprobs": k, "logprobs_mode": "raw_logprobs", "enable_prefix_caching": False,
                         "seed": seed, "max_model_len": max_model_len, "dtype": dtype}
        self.llm = LLM(model=model, gpu_memory_utilization=gpu_memory_utilization, **self.settings)
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._vllm_version = vllm.__version__

    def next_topk(self, contexts: list[list[int]], k: int) -> list[list[tuple[int, float]]]:
        from vllm.inputs import TokensPrompt

        if k != self.k:
            raise ValueError(f"this engine was started with max_logprobs={self.k}, not {k}")
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts], self.params, use_tqdm=False)
        res = []
        for o in outs:
            lps = o.outputs[0].logprobs[0]  # token id -> Logprob(logprob, rank, decoded_token)
            top = sorted(((int(t), float(lp.logprob), int(lp.rank)) for t, lp in lps.items()), key=lambda x: (x[2], x[0]))
            res.append([(t, lp) for t, lp, r in top if r <= k][:k])
        return res

    def fingerprint_fields(self) -> dict:
        return {"backend": self.backend, "model": self.model_name, "precision": self.dtype,
                "tokenizer_sha256": tokenizer_sha256(self.tokenizer)}

    def conditions(self) -> dict:
        import torch

        cap = torch.cuda.get_device_capability(0)
        return {"vllm": self._vllm_version, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                "compute_capability": f"{cap[0]}.{cap[1]}", "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT"),
                **self.settings}
