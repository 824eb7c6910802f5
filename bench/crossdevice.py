"""``semarc bench crossdevice``: bitstreams made on one machine or device, decoded on another.

An archive is written on GPUs and read back anywhere. This check codes the
same captions and images on two sides (say a GPU machine and this CPU) and
decodes each side's bitstreams on the other:

1. ``semarc bench crossdevice --prepare DIR --shared ../shared/data``
   writes the inputs both sides use: captions (the Kodak LLaVA captions, 200
   COCO val2017 captions sampled with seed 0, edge cases), a small causal LM
   (a randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved once,
   so that both sides load identical weights and the inputs stay small to
   copy: the real SmolLM2 GGUF is 98 MB), and Kodak images.
2. ``semarc bench crossdevice --inputs DIR --device cuda --out SIDE``
   on the first side: caption bitstreams at batch sizes 1, 7 and 64 (and on
   that machine's CPU), image bitstreams of every shipped rate point at batch
   sizes 1 and 4, each decoded there. Writes ``SIDE/side.json`` and the
   decoded pixels ``SIDE/decoded.npz``.
3. ``semarc bench crossdevice --inputs DIR --against SIDE --out OUT``
   on the second side: decodes the first side's bitstreams, encodes the same
   inputs here, and compares. Writes ``OUT/crossdevice.json`` and ``.md``.

What must hold: every caption decodes to its text and caption bytes are
identical everywhere (the portable profile); every image bitstream decodes
with its symbol check passing (the entropy-coded symbols are exact). The
reconstructed pixels come from a float synthesis transform, so they may differ
between devices by rounding; the report gives how much.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

EDGE_TEXTS = ["", " ", "a", "Ünïcödé 🐶🐱 text", "tab\tand\nnewline", "日本語のキャプション", "x" * 300,
              "A photo of <|im_start|> a special token string"]


def prepare(folder: str, shared: str = "../shared/data", n_coco: int = 200, n_images: int = 4) -> Path:
    """Write the shared inputs (captions.json, lm/, images/) to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from semarc.bench.captions import load_sets
    from semarc.codec import lm as lm_mod

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sets, _ = load_sets(Path(shared), n_coco=n_coco)
    (out / "captions.json").write_text(json.dumps({"kodak": sets["kodak"], "coco": sets["coco"],
                                                   "edge": EDGE_TEXTS}, ensure_ascii=False))
    tok = lm_mod.load().tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    net = LlamaForCausalLM(cfg)
    with torch.no_grad():  # peakier next-token distributions than the 0.02 default init
        net.get_input_embeddings().weight.normal_(0, 0.5)
    shutil.rmtree(out / "lm", ignore_errors=True)
    net.half().save_pretrained(out / "lm")  # fp16 on disk (6 MB); loaded as float32, then float64
    tok.save_pretrained(out / "lm")
    img = out / "images"
    img.mkdir(exist_ok=True)
    for p in sorted((Path(shared) / "kodak").glob("kodim*.png"))[:n_images]:
        shutil.copyfile(p, img / p.name)
    return out


def _inputs(folder: str):
    from semarc.codec.imageio import read_image

    d = Path(folder)
    caps = json.loads((d / "captions.json").read_text())
    texts = caps["kodak"] + caps["coco"] + caps["edge"]
    images = [(p.stem, read_image(p.read_bytes())) for p in sorted((d / "images").glob("*.png"))]
    return texts, str(d / "lm"), images


def _caption_coder(lm_path: str, device: str, batch: int):
    from semarc.codec import lm as lm_mod
    from semarc.codec.caption import CaptionCoder

    lm = lm_mod.TransformersLM(lm_path, device=device)
    return CaptionCoder(model=lm_path, lm=lm, batch_size=batch)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _points(points: list[str] | None) -> list[str]:
    """The rate points to code: those given, else every shipped one."""
    from semarc.codec import image_models

    return list(points) if points else sorted(image_models.shipped_rate_points())


def _device_info(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def encode_side(inputs: str, device: str, out: str, points: list[str] | None = None, keep_pixels: int = 2,
                captions: bool = True) -> dict:
    """Step 2: code everything on ``device`` (and, for captions, this machine's CPU).
    ``captions=False`` codes the images only (e.g. rate points added after a
    side's captions were checked)."""
    from semarc.codec.image import ImageCoder

    texts, lm_path, images = _inputs(inputs)
    res: dict = {"info": _device_info(device), "captions": {"fingerprint": None, "runs": {}}, "images": {}}
    runs = res["captions"]["runs"]
    # captions: batch sizes 1, 7, 64 on the device; 64 on this machine's CPU too
    sides = [(device, (64, 7, 1))] + ([("cpu", (64,))] if device != "cpu" else [])
    for dev, batches in (sides if captions else []):
        coder = _caption_coder(lm_path, dev, 64)
        for b in batches:
            coder.batch_size = b
            t0 = time.perf_counter()
            coded = coder.encode_batch(texts)
            runs[f"{dev}/batch{b}"] = {
                "payloads": [c.payload.hex() for c in coded], "modes": [c.mode for c in coded],
                "encode_s": round(time.perf_counter() - t0, 3)}
        coder.batch_size = 64
        back = coder.decode_batch([bytes.fromhex(h) for h in runs[f"{dev}/batch64"]["payloads"]], errors="return")
        runs[f"{dev}/batch64"]["decoded_ok"] = sum(b == t for b, t in zip(back, texts))
        res["captions"]["fingerprint"] = coder.describe()["fingerprint"]
        res["captions"].setdefault("encode_path", {})[dev] = coder.encode_path
    decoded: dict[str, np.ndarray] = {}
    arrays = [a for _, a in images]
    for point in _points(points):
        coder = ImageCoder(point, device=device)
        entry: dict = {"fingerprint": coder.model.fingerprint}
        for b in (4, 1):
            t0 = time.perf_counter()
            coded = [c for i in range(0, len(arrays), b) for c in coder.encode_batch(arrays[i:i + b])]
            entry[f"batch{b}"] = {"payloads": [c.payload.hex() for c in coded], "checks": [c.check for c in coded],
                                  "encode_s": round(time.perf_counter() - t0, 3)}
        items = [(bytes.fromhex(h), c) for h, c in zip(entry["batch4"]["payloads"], entry["batch4"]["checks"])]
        back = coder.decode_batch(items)
        entry["decoded_ok"] = sum(not isinstance(x, Exception) for x in back)
        entry["decoded_sha256"] = [_sha(x) if not isinstance(x, Exception) else str(x) for x in back]
        for (name, _), x in list(zip(images, back))[:keep_pixels]:  # pixels of the first few (transfer size)
            if not isinstance(x, Exception):
                decoded[f"{Path(point).stem}/{name}"] = x
        res["images"][point] = entry
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "side.json").write_text(json.dumps(res))
    np.savez_compressed(o / "decoded.npz", **decoded)
    return res


def _load_sides(against: str) -> tuple[dict, dict]:
    """One or more encode-side folders (comma-separated, from the same device),
    merged: captions from those that coded them, images from all."""
    merged: dict = {"info": None, "captions": {"fingerprint": None, "runs": {}}, "images": {}}
    px: dict = {}
    for d in against.split(","):
        side = json.loads((Path(d) / "side.json").read_text())
        merged["info"] = merged["info"] or side["info"]
        if side["captions"]["runs"]:
            merged["captions"] = side["captions"]
        merged["images"].update(side["images"])
        px.update(dict(np.load(Path(d) / "decoded.npz")))
    return merged, px


def _compare_captions(texts: list[str], lm_path: str, other: dict) -> dict:
    coder = _caption_coder(lm_path, "cpu", 64)
    if coder.describe()["fingerprint"] != other["captions"]["fingerprint"]:
        raise SystemExit("the caption coder's fingerprint differs between the two sides (different inputs?)")
    mine = [c.payload.hex() for c in coder.encode_batch(texts)]
    runs = other["captions"]["runs"]
    cap = {"n": len(texts), "lm_captions": sum(m == "lm" for m in next(iter(runs.values()))["modes"])}
    for key, v in runs.items():
        back = coder.decode_batch([bytes.fromhex(h) for h in v["payloads"]], errors="return")
        cap[key] = {"bytes_identical_to_here": sum(a == b for a, b in zip(v["payloads"], mine)),
                    "decoded_here_exactly": sum(b == t for b, t in zip(back, texts)),
                    "decoded_there_exactly": v.get("decoded_ok")}
    return cap


def compare(inputs: str, against: str, out: str) -> dict:
    """Step 3: decode the other side's bitstreams (one or more comma-separated
    encode-side folders) here and compare with this side."""
    from semarc.codec.image import ImageCoder

    texts, lm_path, images = _inputs(inputs)
    other, other_px = _load_sides(against)
    here = _device_info("cpu")
    rep: dict = {"encoded_on": other["info"], "decoded_on": here, "captions": {}, "images": {}}
    if other["captions"]["runs"]:
        rep["captions"] = _compare_captions(texts, lm_path, other)
    arrays = [a for _, a in images]
    for point, entry in other["images"].items():
        coder = ImageCoder(point, device="cpu")
        if coder.model.fingerprint != entry["fingerprint"]:
            rep["images"][point] = {"error": "different weights on the two sides"}
            continue
        mine_coded = coder.encode_batch(arrays)
        items = [(bytes.fromhex(h), c) for h, c in zip(entry["batch4"]["payloads"], entry["batch4"]["checks"])]
        back = coder.decode_batch(items)
        diffs, differing, npx = [], 0, 0
        for (name, _), x in zip(images, back):
            ref = other_px.get(f"{Path(point).stem}/{name}")
            if isinstance(x, Exception) or ref is None:
                continue
            d = np.abs(x.astype(np.int16) - ref.astype(np.int16))
            diffs.append(int(d.max()))
            differing += int((d > 0).sum())
            npx += d.size
        rep["images"][point] = {
            "n": len(arrays),
            "payloads_identical_to_here": sum(c.payload.hex() == h for c, h in zip(mine_coded, entry["batch4"]["payloads"])),
            "payloads_identical_batch1_vs_4_there": sum(a == b for a, b in zip(entry["batch1"]["payloads"],
                                                                                entry["batch4"]["payloads"])),
            "decoded_here_symbol_check_ok": sum(not isinstance(x, Exception) for x in back),
            "decoded_there_ok": entry["decoded_ok"],
            "pixels_identical_here_vs_there": sum(
                not isinstance(x, Exception) and _sha(x) == s for x, s in zip(back, entry["decoded_sha256"])),
            "pixels_compared": len(diffs),
            "max_abs_pixel_diff": max(diffs) if diffs else None,
            "fraction_of_values_differing": round(differing / npx, 6) if npx else None}
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "crossdevice.json").write_text(json.dumps(rep, indent=1))
    (o / "crossdevice.md").write_text(markdown(rep))
    return rep


def markdown(rep: dict) -> str:
    e, d = rep["encoded_on"], rep["decoded_on"]
    lines = [f"# Cross-device decoding: encoded on {e.get('gpu', e['device'])} (torch {e['torch']}), "
             f"decoded on {d['processor']} CPU (torch {d['torch']})", "",
             "## Captions (portable profile, float64)", "",
             "| encoded with | captions | bytes identical to this CPU's | decoded here exactly | decoded there exactly |",
             "| --- | --- | --- | --- | --- |"]
    cap = rep["captions"]
    for key, v in cap.items():
        if isinstance(v, dict):
            lines.append(f"| {key} | {cap['n']} | {v['bytes_identical_to_here']} | {v['decoded_here_exactly']} | "
                         f"{v['decoded_there_exactly'] if v['decoded_there_exactly'] is not None else '-'} |")
    lines += ["", "## Images", "",
              "| rate point | images | payloads identical to this CPU's | batch 1 = batch 4 there | symbol check ok here "
              "| pixels identical | max abs pixel diff | values differing |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for point, v in rep["images"].items():
        if "error" in v:
            lines.append(f"| {point} | {v['error']} |")
            continue
        lines.append(f"| {point} | {v['n']} | {v['payloads_identical_to_here']} | {v['payloads_identical_batch1_vs_4_there']} "
                     f"| {v['decoded_here_symbol_check_ok']} | {v['pixels_identical_here_vs_there']} "
                     f"| {v['max_abs_pixel_diff']} | {v['fraction_of_values_differing']} |")
    return "\n".join(lines) + "\n"
