"""``semarc bench captions --out DIR``: caption coding, semarc vs the baselines.

Each caption is coded alone. Sets: the 24 Kodak LLaVA captions and a fixed
sample of 500 COCO val2017 captions (seed 0). Baselines in the same run on the
same captions: raw UTF-8, zlib-9, zstd-19, brotli-11, zstd-19 with a 16 KiB
dictionary trained on COCO captions disjoint from the sample, the seed paper's
scheme (token ranks under the same model with an 8-token context after a start
token, as varints, zlib-9; and the same given semarc's prompt prefix),
constriction's range and ANS coders on the same integer tables, and the model's
ideal code length (sum of -log2 p in float64, end token included, after the
same prefix). semarc's figure is the whole caption section: every byte stored.
Writes DIR/captions.json and DIR/captions.md.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import random
import sys
import time
import zlib
from pathlib import Path

import torch


def coco_shuffled(shared: Path, seed: int = 0) -> list[str]:
    """All COCO val2017 captions in a fixed shuffled order."""
    caps = [a["caption"] for a in json.loads((shared / "coco_captions_val2017.json").read_text())["annotations"]]
    random.Random(seed).shuffle(caps)
    return caps


def load_sets(shared: Path, n_coco: int = 500, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    kodak = [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv", encoding="utf-8"))]
    coco = coco_shuffled(shared, seed)
    # the rest is disjoint from the sample: dictionary training
    return {"kodak": kodak, "coco": coco[:n_coco]}, coco[n_coco:]


def rank_zlib_sizes(lm, prefix: list[int], caps: list[str], context: int = 8, batch: int = 256) -> list[int]:
    """The seed paper's scheme: the rank of each token (and the end token) under
    the model given the previous ``context`` tokens, as LEB128 varints, zlib-9."""
    from semarc.codec.varint import write_varint

    windows, owners, targets = [], [], []
    for ci, c in enumerate(caps):
        ids = lm.tokenize(c) + [lm.eos_id]
        for t, tok in enumerate(ids):
            windows.append(ids[max(0, t - context):t])
            owners.append(ci)
            targets.append(tok)
    ranks: list[int] = [0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    for b in range(0, len(order), batch):
        chunk = order[b:b + batch]
        lg = lm.score(prefix, [windows[i] for i in chunk])  # the last row predicts the next token
        for i, row in zip(chunk, lg):
            last = row[-1]
            ranks[i] = int((last > last[targets[i]]).sum())
    out = [b""] * len(caps)
    for i, r in enumerate(ranks):
        out[owners[i]] += write_varint(r)
    return [len(zlib.compress(x, 9)) for x in out]


def ideal_bits(lm, prefix: list[int], caps: list[str], batch: int = 16) -> list[float]:
    import torch

    out = []
    for b in range(0, len(caps), batch):
        seqs = [lm.tokenize(c) for c in caps[b:b + batch]]
        for ids, lg in zip(seqs, lm.score(prefix, seqs)):
            lp = torch.log_softmax(lg, -1)
            out.append(-sum(float(lp[t, s]) for t, s in enumerate(ids + [lm.eos_id])) / math.log(2))
    return out


def coder_comparison(coder, caps: list[str], coded, batch: int = 16) -> dict[str, list[int]]:
    """The same token streams (grid A tables, the end token included) coded by
    constriction's range coder and ANS coder, which emit whole 32-bit words:
    what semarc would store with a maintained library instead of its own
    bit-precise coder (no mode symbol or check bits counted for them)."""
    import constriction
    import numpy as np

    from semarc.codec.caption import quantized_freqs

    out = {"constriction-range": [], "constriction-ans": []}
    for b in range(0, len(caps), batch):
        seqs = [coder.lm.tokenize(c) + [coder.lm.eos_id] for c in caps[b:b + batch]]
        for ids, lg in zip(seqs, coder.lm.score(coder.prefix, [s[:-1] for s in seqs])):
            freq = quantized_freqs(lg, 0).to(torch.float64)
            probs = (freq / freq.sum(-1, keepdim=True)).numpy()
            rng, ans = constriction.stream.queue.RangeEncoder(), constriction.stream.stack.AnsCoder()
            models = [constriction.stream.model.Categorical(p, perfect=False) for p in probs]
            for s, m in zip(ids, models):
                rng.encode(np.array([s], dtype=np.int32), m)
            for s, m in reversed(list(zip(ids, models))):
                ans.encode_reverse(np.array([s], dtype=np.int32), m)
            out["constriction-range"].append(4 * len(rng.get_compressed()))
            out["constriction-ans"].append(4 * len(ans.get_compressed()))
    return out


def run(out_dir: str, shared: str = "../shared/data", n_coco: int = 500, threads: int = 1, batch: int = 64) -> dict:
    import brotli
    import torch
    import zstandard

    from semarc.codec import native
    from semarc.codec.caption import CaptionCoder
    from semarc.codec.lm import TransformersLM

    torch.set_num_threads(threads)
    sets, dict_pool = load_sets(Path(shared), n_coco)
    zdict = zstandard.train_dictionary(16 * 1024, [c.encode() for c in dict_pool])
    zc, zdc = zstandard.ZstdCompressor(level=19), zstandard.ZstdCompressor(level=19, dict_data=zdict)
    coder = CaptionCoder(batch_size=batch)
    lm32 = TransformersLM(dtype=torch.float32)
    result = {"command": f"semarc bench captions --out {out_dir} --n-coco {n_coco} --threads {threads} --batch {batch}",
              "machine": platform.processor() or platform.machine(),
              "torch_threads": threads, "batch_size": batch, "profile": coder.describe(),
              # how the decoder's steps ran (the bytes do not depend on it): codec/lm_steps.py, codec/native.py
              "decoder_steps": {"impl": getattr(coder.lm, "steps_impl", "n/a"),
                                "kernels": getattr(coder.lm, "steps_kernels", None),
                                "native_unavailable": native.why_not()},
              "sets": {}}
    for name, caps in sets.items():
        print(f"[{name}] {len(caps)} captions", file=sys.stderr, flush=True)
        sizes = {
            "raw": [len(c.encode()) for c in caps],
            "zlib": [len(zlib.compress(c.encode(), 9)) for c in caps],
            "zstd": [len(zc.compress(c.encode())) for c in caps],
            "brotli": [len(brotli.compress(c.encode(), quality=11)) for c in caps],
            "zstd-dict": [len(zdc.compress(c.encode())) for c in caps],
        }
        # the seed scheme as published: an 8-token window after a start token only
        bos = lm32.tokenizer.bos_token_id if lm32.tokenizer.bos_token_id is not None else lm32.eos_id
        sizes["rank-zlib"] = rank_zlib_sizes(lm32, [bos], caps)
        # the same scheme given semarc's prompt prefix too (a stronger baseline)
        sizes["rank-zlib-prefix"] = rank_zlib_sizes(lm32, coder.prefix, caps)
        bits = ideal_bits(coder.lm, coder.prefix, caps)
        t = time.time()
        for b in range(0, len(caps), batch):
            lm32.score(coder.prefix, [lm32.tokenize(c) for c in caps[b:b + batch]])
        t_f32 = time.time() - t
        t = time.time()
        coded = coder.encode_batch(caps)  # verification included
        t_enc = time.time() - t
        t = time.time()
        back = coder.decode_batch([c.payload for c in coded])
        t_dec = time.time() - t
        if back != caps:
            raise SystemExit(f"[{name}] round-trip FAILED for {sum(a != b for a, b in zip(back, caps))} captions")
        sizes["semarc-portable"] = [len(c.payload) for c in coded]
        sizes.update(coder_comparison(coder, caps, coded))
        mean = {k: sum(v) / len(v) for k, v in sizes.items()}
        mean["ideal"] = sum(bits) / len(bits) / 8
        result["sets"][name] = {
            "n": len(caps), "mean_bytes": {k: round(v, 3) for k, v in mean.items()},
            "fallbacks": sum(c.mode == "fallback" for c in coded),
            "grid_b": sum(c.mode == "lm" and c.grid == 1 for c in coded),
            "captions_per_s": {"semarc-portable-encode": round(len(caps) / t_enc, 3),
                               "semarc-portable-decode": round(len(caps) / t_dec, 3),
                               "float32-batched-scoring": round(len(caps) / t_f32, 3)},
            "slowdown_vs_float32": {"encode": round(t_enc / t_f32, 2), "decode": round(t_dec / t_f32, 2)},
        }
        print(json.dumps(result["sets"][name]), file=sys.stderr, flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "captions.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "captions.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    cols = ["raw", "zlib", "zstd", "brotli", "zstd-dict", "rank-zlib", "rank-zlib-prefix", "constriction-range", "constriction-ans",
            "semarc-portable", "ideal"]
    lines = ["# Caption coding: mean bytes per caption (each coded alone)", "",
             f"Command: `{r['command']}` (machine: {r['machine']}, torch threads: {r['torch_threads']}, "
             f"batch size {r.get('batch_size')}).", "",
             *([f"Decoder steps: `{r['decoder_steps']['impl']}` (products: "
                f"{r['decoder_steps']['kernels'] or 'transformers'}"
                + (f"; compiled kernels unavailable: {r['decoder_steps']['native_unavailable']}"
                   if r['decoder_steps'].get('native_unavailable') else "") + ").", ""]
               if "decoder_steps" in r else []),
             "`semarc-portable` is the whole stored caption section (mode symbol, arithmetic code, termination "
             "with check bits: every byte the record needs). `ideal` is the model's code length (sum of -log2 p "
             "in float64, end token included). `constriction-*` code the same token streams with the same "
             "integer tables in the `constriction` library (32-bit words; no mode or check counted). "
             "`rank-zlib` is the seed paper's scheme (token ranks under the same model with an 8-token window after "
             "a start token, LEB128, zlib-9); `rank-zlib-prefix` gives it semarc's prompt prefix too.", "",
             "| set | n | " + " | ".join(cols) + " | semarc - ideal | semarc / rank-zlib | semarc / rank-zlib-prefix |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " | --- | --- | --- |"]
    for name, s in r["sets"].items():
        m = s["mean_bytes"]
        lines.append(f"| {name} | {s['n']} | " + " | ".join(f"{m[c]:.1f}" if c in m else "-" for c in cols)
                     + f" | {m['semarc-portable'] - m['ideal']:.2f} | {m['semarc-portable'] / m['rank-zlib']:.2f} | "
                     f"{m['semarc-portable'] / m['rank-zlib-prefix']:.2f} |")
    first = next(iter(r["sets"].values()))
    lines += ["", "Speed on this machine, captions per second (same captions, same batch size, same threads), and "
              "semarc's time per caption relative to plain float32 batched scoring:", "",
              "| set | " + " | ".join(first["captions_per_s"]) + " | encode / float32 | decode / float32 | "
              "fallbacks | grid B |", "| --- |" + " --- |" * (len(first["captions_per_s"]) + 4)]
    for name, s in r["sets"].items():
        sl = s.get("slowdown_vs_float32", {})
        lines.append(f"| {name} | " + " | ".join(str(v) for v in s["captions_per_s"].values())
                     + f" | {sl.get('encode')} | {sl.get('decode')} | {s.get('fallbacks')} | {s.get('grid_b')} |")
    return "\n".join(lines) + "\n"
