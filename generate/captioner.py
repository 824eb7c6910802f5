"""Image captioning with a multimodal (image-text-to-text) model.

One small interface, importable without Ray::

    cap = make_captioner(CaptionerConfig(model="path/or/hub-id"))
    cap.caption_batch(images)  # -> list[str | Exception], one per image

``images`` are numpy arrays (HxWx3 or HxW, uint8), PIL images, or the bytes of
an image file (decoded by the same rule as the image codec,
``codec.imageio.read_image``). An image that cannot be read or processed gets
an ``Exception`` in its place (a ``CaptionerError`` naming the reason); the
rest of the batch is still captioned.

Backends:

* ``transformers``: ``AutoProcessor`` + ``AutoModelForImageTextToText`` by hub
  id or local folder; prompts built with the processor's chat template;
  batched generation with left padding; greedy (``temperature=0``) or sampled
  with a seed.
* ``vllm``: vLLM's offline ``LLM`` entry point, one request per image
  (``{"prompt": ..., "multi_modal_data": {"image": pil}}``), prompts built
  with the model's chat template, ``SamplingParams(temperature=..., seed=...,
  max_tokens=...)``; ``gpu_memory_utilization`` from the config.

Prompts (``CaptionerConfig.prompt``): ``short`` (default: a short factual
description of what is visible), ``misc`` (a MISC-style structured caption:
the main items, one detail per item, an overall description, as plain text),
or any other text, used as the prompt itself.

"One LMM": ``export_text_lm(vlm)`` writes the language model of an
image-text-to-text model (its decoder and output head, with its tokenizer) as
an ordinary causal-LM folder, so the caption coder
(``semarc.codec.caption.CaptionCoder``) can code captions with the captioning
model's own next-token probabilities, from text-only context.
``text_lm(vlm)`` returns it loaded as a ``TransformersLM``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

BACKENDS = ("transformers", "vllm")

PROMPTS = {
    "short": ("Describe this image in one or two short, factual sentences: say what is visible "
              "(objects, people, animals, setting, colours). Do not guess or give opinions."),
    "misc": ("List the main items visible in this image, at most five, one per line, as "
             "'item: one short detail about it (colour, position, size or state)'. Then write one "
             "last line starting with 'Overall:' that describes the whole scene in one sentence. "
             "Plain text only: no markdown, no numbering, no other lines."),
}
DEFAULT_MAX_TOKENS = {"short": 64, "misc": 192}
CUSTOM_MAX_TOKENS = 128


class CaptionerError(RuntimeError):
    """This image could not be captioned (the reason is the message)."""


@dataclass(frozen=True)
class CaptionerConfig:
    model: str
    backend: str = "transformers"
    prompt: str = "short"           # "short", "misc", or the prompt text itself
    max_tokens: int | None = None   # default: by prompt (DEFAULT_MAX_TOKENS)
    temperature: float = 0.0        # 0: greedy; > 0: sampled with ``seed``
    seed: int = 0
    max_side: int = 1024            # longer sides are scaled down (Lanczos) before the processor
    dtype: str = "auto"             # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"            # auto: cuda if available, else cpu
    gpu_memory_utilization: float = 0.85  # vllm
    max_model_len: int | None = 8192      # vllm
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown captioner backend {self.backend!r} (available: {', '.join(BACKENDS)})")
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the caption prompt is empty")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("caption max tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")

    @property
    def prompt_text(self) -> str:
        return PROMPTS.get(self.prompt, self.prompt)

    @property
    def prompt_name(self) -> str:
        return self.prompt if self.prompt in PROMPTS else "custom"

    @property
    def new_tokens(self) -> int:
        if self.max_tokens is not None:
            return int(self.max_tokens)
        return DEFAULT_MAX_TOKENS.get(self.prompt, CUSTOM_MAX_TOKENS)

    def identity(self) -> dict:
        """What makes its captions what they are: model, backend, prompt (name
        and text), token limit, sampling, input size. Goes into a job's config."""
        return {"model": self.model, "backend": self.backend, "prompt": self.prompt_name,
                "prompt_text": self.prompt_text, "max_tokens": self.new_tokens,
                "temperature": float(self.temperature), "seed": int(self.seed) if self.temperature else None,
                "max_side": int(self.max_side)}

    def to_dict(self) -> dict:
        return asdict(self)


def messages_for(prompt: str) -> list[dict]:
    """The chat: one user turn with the image, then the prompt."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def to_pil(image, max_side: int = 0):
    """An array, PIL image or image-file bytes -> RGB PIL image (or CaptionerError)."""
    from PIL import Image

    from ..codec.imageio import ImageReadError, read_image, to_rgb

    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            im = Image.fromarray(read_image(bytes(image)))
        elif isinstance(image, np.ndarray):
            a = image
            if a.dtype != np.uint8:
                raise CaptionerError(f"image array is {a.dtype}, expected uint8")
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
                raise CaptionerError(f"image array has shape {a.shape}, expected HxW, HxWx3 or HxWx4")
            if a.shape[0] < 1 or a.shape[1] < 1:
                raise CaptionerError(f"image array is empty ({a.shape})")
            im = to_rgb(Image.fromarray(np.ascontiguousarray(a)))
        elif isinstance(image, Image.Image):
            im = to_rgb(image)
        else:
            raise CaptionerError(f"cannot caption a {type(image).__name__} (want an array, a PIL image or bytes)")
    except CaptionerError:
        raise
    except ImageReadError as e:
        raise CaptionerError(f"cannot read image: {e}") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
        raise CaptionerError(f"cannot read image: {type(e).__name__}: {e}") from e
    if im.width < 1 or im.height < 1:
        raise CaptionerError(f"image is empty ({im.width}x{im.height})")
    if max_side and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    return im


def clean_caption(text: str) -> str:
    return text.strip()


class Captioner:
    """Images -> captions. Subclasses implement ``_generate(pils) -> (texts, new-token counts)``."""

    backend = "?"

    def __init__(self, config: CaptionerConfig) -> None:
        self.config = config
        self.last_generated_tokens: list[int | None] = []

    def identity(self) -> dict:
        return self.config.identity()

    def prompt(self) -> str:
        """The full prompt text that the model sees (chat template applied)."""
        raise NotImplementedError

    def _generate(self, pils: list) -> tuple[list[str], list[int]]:
        raise NotImplementedError

    def caption_batch(self, images: list) -> list:
        """One caption (str) per image, or an Exception for an image that could
        not be read or processed; never raises for a bad image."""
        out: list = [None] * len(images)
        toks: list = [None] * len(images)
        pils, idx = [], []
        for i, im in enumerate(images):
            try:
                pils.append(to_pil(im, self.config.max_side))
                idx.append(i)
            except CaptionerError as e:
                out[i] = e
        if pils:
            try:
                texts, counts = self._generate(pils)
                results = list(zip(texts, counts))
            except Exception as e:  # noqa: BLE001 - isolate: one by one, so one bad image cannot fail the rest
                if len(pils) == 1:
                    results = [CaptionerError(f"captioning failed: {type(e).__name__}: {e}")]
                else:
                    results = [self._one(p) for p in pils]
            for i, r in zip(idx, results):
                if isinstance(r, Exception):
                    out[i] = r
                else:
                    out[i], toks[i] = clean_caption(r[0]), r[1]
        self.last_generated_tokens = toks
        return out

    def _one(self, pil):
        try:
            texts, counts = self._generate([pil])
            return texts[0], counts[0]
        except Exception as e:  # noqa: BLE001
            return CaptionerError(f"captioning failed: {type(e).__name__}: {e}")


# -- transformers ---------------------------------------------------------------

def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (auto, float32, float16, bfloat16, float64)") from None


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersCaptioner(Captioner):
    backend = "transformers"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = _device(config.device)
        self.dtype = _torch_dtype(config.dtype, self.device)
        kw = {"trust_remote_code": True} if config.trust_remote_code else {}
        with contextlib.redirect_stderr(io.StringIO()):
            self.processor = AutoProcessor.from_pretrained(config.model, **kw)
            self.model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=self.dtype, **kw)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None) or self.processor
        self.tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._prompt = self.processor.apply_chat_template(messages_for(config.prompt_text),
                                                          add_generation_prompt=True, tokenize=False)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self._eos = {int(e) for e in [*eos, self.tokenizer.eos_token_id] if e is not None}
        self._nested = True  # images as [[im], [im], ...]; some processors want a flat list
        self._torch = torch

    def prompt(self) -> str:
        return self._prompt

    def _inputs(self, pils: list):
        texts = [self._prompt] * len(pils)
        if self._nested:
            try:
                return self.processor(text=texts, images=[[p] for p in pils], padding=True, return_tensors="pt")
            except (TypeError, ValueError):
                self._nested = False
        return self.processor(text=texts, images=pils, padding=True, return_tensors="pt")

    def _generate(self, pils: list) -> tuple[list[str], list[int]]:
        torch = self._torch
        inputs = self._inputs(pils).to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        gen = {"max_new_tokens": self.config.new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
               "num_beams": 1}
        if self.config.temperature > 0:
            torch.manual_seed(self.config.seed)
            gen.update(do_sample=True, temperature=float(self.config.temperature), top_p=1.0, top_k=0)
        else:
            gen.update(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1]:].to("cpu")
        counts = []
        for row in new.tolist():
            n = 0
            for t in row:  # up to and including the first end token; padding after it does not count
                n += 1
                if t in self._eos:
                    break
            counts.append(n)
        return self.processor.batch_decode(new, skip_special_tokens=True), counts


# -- vLLM -----------------------------------------------------------------------

def vllm_unavailable() -> str | None:
    """Why the vLLM backend cannot run here, or None."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"vllm is not installed ({type(e).__name__}: {e}); pip install 'semarc[vllm]'"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU (vLLM's captioning backend needs one)"
    except Exception as e:  # noqa: BLE001
        return f"torch cannot check for CUDA: {e}"
    return None


class VLLMCaptioner(Captioner):
    """vLLM's offline ``LLM`` entry point (documented API:
    ``LLM(model=...).generate([{"prompt": ..., "multi_modal_data": {"image": pil}}], sampling_params)``)."""

    backend = "vllm"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        why = vllm_unavailable()
        if why:
            raise RuntimeError(f"the vllm captioner backend is unavailable: {why}")
        from vllm import LLM, SamplingParams

        kw = dict(model=config.model, gpu_memory_utilization=float(config.gpu_memory_utilization),
                  seed=int(config.seed), limit_mm_per_prompt={"image": 1},
                  trust_remote_code=bool(config.trust_remote_code))
        if config.max_model_len:
            kw["max_model_len"] = int(config.max_model_len)
        if config.dtype != "auto":
            kw["dtype"] = config.dtype
        self.llm = LLM(**kw)
        self._prompt = self._chat_prompt(config)
        sp = dict(max_tokens=self.config.new_tokens, temperature=float(config.temperature))
        if config.temperature > 0:
            sp["seed"] = int(config.seed)
        self.sampling = SamplingParams(**sp)

    def _chat_prompt(self, config: CaptionerConfig) -> str:
        msgs = messages_for(config.prompt_text)
        try:  # the processor's template knows where the image placeholder goes
            from transformers import AutoProcessor

            proc = AutoProcessor.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
            return proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - fall back to the tokenizer's template
            tok = self.llm.get_tokenizer()
            return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def prompt(self) -> str:
        return self._prompt

    def _generate(self, pils: list) -> tuple[list[str], list[int]]:
        reqs = [{"prompt": self._prompt, "multi_modal_data": {"image": p}} for p in pils]
        outs = self.llm.generate(reqs, sampling_params=self.sampling, use_tqdm=False)
        return [o.outputs[0].text for o in outs], [len(o.outputs[0].token_ids) for o in outs]


def make_captioner(config: CaptionerConfig | dict) -> Captioner:
    if isinstance(config, dict):
        config = CaptionerConfig(**config)
    if config.backend == "vllm":
        return VLLMCaptioner(config)
    return TransformersCaptioner(config)


# -- one LMM: the captioning model's language model as the caption coder's LM ----

TEXT_LM_MARK = "semarc_text_lm.json"

# Text models of multimodal models that have no causal-LM class of their own, and
# the class whose weights and computation they share on text-only input (Qwen2-VL's
# multimodal RoPE gives every position the same three indices on text, which is
# plain RoPE). ``export_text_lm`` checks the logits either way.
TEXT_MODEL_ALIASES = {"qwen2_5_vl_text": "qwen2", "qwen2_vl_text": "qwen2"}


def _causal_config(text_cfg):
    from transformers import AutoConfig

    d = text_cfg.to_dict()
    alias = TEXT_MODEL_ALIASES.get(text_cfg.model_type)
    if alias is None:
        return text_cfg.__class__.from_dict(d)
    d.pop("model_type", None)
    for key in ("rope_parameters", "rope_scaling"):
        rope = d.get(key)
        if isinstance(rope, dict) and ("mrope_section" in rope or rope.get("type") == "mrope"):
            rope = {k: v for k, v in rope.items() if k not in ("mrope_section", "type", "mrope_interleaved")}
            rope["rope_type"] = "default"
            d[key] = rope
    return AutoConfig.for_model(alias, **d)


def _source_key(vlm: str) -> str:
    """Cache key of an export: the model's name, and for a local folder the
    names, sizes and modification times of its files."""
    import transformers

    parts = [os.path.abspath(vlm) if os.path.isdir(vlm) else vlm, transformers.__version__]
    if os.path.isdir(vlm):
        for root, _, files in sorted(os.walk(vlm)):
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                parts.append(f"{os.path.relpath(os.path.join(root, f), vlm)}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def text_lm_dir(vlm: str) -> str:
    root = os.environ.get("SEMARC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "semarc")
    return os.path.join(root, "text-lm", _source_key(vlm))


def export_text_lm(vlm: str, out: str | None = None, check: bool = True, trust_remote_code: bool = False) -> str:
    """Write the language model of the image-text-to-text model ``vlm`` (hub
    id or folder) as a causal-LM folder that ``AutoModelForCausalLM`` and the
    caption coder load like any other: its text config, the decoder's weights,
    the output head (tied to the input embeddings where the model ties them),
    and the model's tokenizer with its chat template. Weights keep the model's
    stored dtype. With ``check``, the exported LM's logits must equal the
    multimodal model's own on a text-only input. Returns the folder (by
    default a cache folder keyed by the model's files, reused when present)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = out or text_lm_dir(vlm)
    if os.path.exists(os.path.join(out, TEXT_LM_MARK)):
        return out
    kw = {"trust_remote_code": True} if trust_remote_code else {}
    with contextlib.redirect_stderr(io.StringIO()):
        net = AutoModelForImageTextToText.from_pretrained(vlm, dtype="auto", **kw).eval()
        try:
            tok = AutoTokenizer.from_pretrained(vlm, **kw)
        except Exception:  # noqa: BLE001 - some repos keep the tokenizer only inside the processor
            tok = AutoProcessor.from_pretrained(vlm, **kw).tokenizer
    decoder = net.get_decoder()
    head = net.get_output_embeddings()
    emb = decoder.get_input_embeddings()
    if decoder is None or head is None or emb is None:
        raise ValueError(f"{vlm}: cannot find the language model's decoder and output head")
    cfg = _causal_config(net.config.get_text_config(decoder=True))
    tied = head.weight.data_ptr() == emb.weight.data_ptr()
    cfg.tie_word_embeddings = tied
    cfg.architectures = None
    cfg.vocab_size = int(head.weight.shape[0])
    try:
        causal = AutoModelForCausalLM.from_config(cfg, dtype=head.weight.dtype)
    except ValueError as e:
        raise ValueError(f"{vlm}: its language model ({cfg.model_type}) has no causal-LM class in transformers "
                         f"{__import__('transformers').__version__}, so it cannot be exported for caption coding: "
                         f"{e}") from e
    missing, unexpected = causal.get_decoder().load_state_dict(decoder.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"{vlm}: the language model's weights do not match {type(causal).__name__} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        causal.tie_weights()
    else:
        causal.get_output_embeddings().weight.data.copy_(head.weight.data)
    if getattr(head, "bias", None) is not None:
        causal.get_output_embeddings().bias = torch.nn.Parameter(head.bias.detach().clone())
    causal.eval()
    if tok.eos_token_id is None and getattr(cfg, "eos_token_id", None) is not None:
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        tok.eos_token = tok.convert_ids_to_tokens(int(eos))
    if check:
        ids = tok("A caption check: two dogs on green grass.", add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            want = net(input_ids=ids).logits.float()
            got = causal(input_ids=ids).logits.float()
        if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-4):
            raise ValueError(f"{vlm}: the exported language model does not reproduce the model's text-only logits")
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)) or ".")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            causal.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        with open(os.path.join(tmp, TEXT_LM_MARK), "w") as f:
            json.dump({"source": vlm, "source_class": type(net).__name__, "lm_class": type(causal).__name__,
                       "tied": tied, "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.exists(os.path.join(out, TEXT_LM_MARK)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process exported it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def text_lm(vlm: str, out: str | None = None, **kw):
    """The language model of ``vlm`` as a caption-coding backend
    (``CaptionCoder(lm=text_lm(vlm))``); ``kw`` go to ``TransformersLM``
    (default float64 for the ``portable`` profile)."""
    import torch

    from ..codec.lm import TransformersLM

    kw.setdefault("dtype", torch.float64)
    return TransformersLM(export_text_lm(vlm, out), **kw)


def main(argv: list[str] | None = None) -> int:
    """``python -m semarc.generate.captioner export-text-lm VLM [OUT]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m semarc.generate.captioner")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-text-lm", help="write the language model of an image-text-to-text model as a "
                                              "causal-LM folder (for --caption-model)")
    e.add_argument("vlm")
    e.add_argument("out", nargs="?", default=None)
    e.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    print(export_text_lm(a.vlm, a.out, trust_remote_code=a.trust_remote_code))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
