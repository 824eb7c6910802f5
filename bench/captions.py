"""``semarc bench captions --out DIR``: caption coding, semarc vs the baselines.

Each caption is coded alone. Sets: the 24 Kodak LLaVA captions and a fixed
sample of 500 COCO val2017 captions (seed 0). Baselines in the same run on the
same captions: raw UTF-8, zlib-9, zstd-19, brotli-11, zstd-19 with a 16 KiB
dictionary trained on COCO captions disjoint from the sample, the seed paper's
scheme (token ranks under the same model with an 8-token context, as varints,
zlib-9), and the model's ideal code length (sum of -log2 p in float64, end token
included, after the same prefix). semarc's figure is the whole caption *section*
(header + arithmetic code + check) and, separately, the payload alone.
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


def load_sets(shared: Path, n_coco: int = 500, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    kodak = [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv", encoding="utf-8"))]
    coco_all = [a["caption"] for a in json.loads((shared / "coco_captions_val2017.json").read_text())["annotations"]]
    idx = list(range(len(coco_all)))
    random.Random(seed).shuffle(idx)
    sample = [coco_all[i] for i in idx[:n_coco]]
    rest = [coco_all[i] for i in idx[n_coco:]]  # disjoint from the sample: dictionary training
    return {"kodak": kodak, "coco": sample}, rest


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


def run(out_dir: str, shared: str = "../shared/data", n_coco: int = 500, threads: int = 2) -> dict:
    import brotli
    import torch
    import zstandard

    from semarc.codec import record
    from semarc.codec.caption import CaptionCoder
    from semarc.codec.lm import TransformersLM

    torch.set_num_threads(threads)
    sets, dict_pool = load_sets(Path(shared), n_coco)
    zdict = zstandard.train_dictionary(16 * 1024, [c.encode() for c in dict_pool])
    zc, zdc = zstandard.ZstdCompressor(level=19), zstandard.ZstdCompressor(level=19, dict_data=zdict)
    coder = CaptionCoder(batch_size=16)
    lm32 = TransformersLM(dtype=torch.float32)
    result = {"command": "semarc " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("semarc") else
              f"semarc bench captions --out {out_dir} --n-coco {n_coco} --threads {threads}", "machine": platform.processor() or platform.machine(),
              "torch_threads": threads, "profile": coder.describe(), "sets": {}}
    for name, caps in sets.items():
        print(f"[{name}] {len(caps)} captions", file=sys.stderr, flush=True)
        sizes = {
            "raw": [len(c.encode()) for c in caps],
            "zlib": [len(zlib.compress(c.encode(), 9)) for c in caps],
            "zstd": [len(zc.compress(c.encode())) for c in caps],
            "brotli": [len(brotli.compress(c.encode(), quality=11)) for c in caps],
            "zstd-dict": [len(zdc.compress(c.encode())) for c in caps],
        }
        sizes["rank-zlib"] = rank_zlib_sizes(lm32, coder.prefix, caps)
        bits = ideal_bits(coder.lm, coder.prefix, caps)
        t = time.time()
        coded = coder.encode_batch(caps)  # verification included
        t_enc = time.time() - t
        t = time.time()
        back = coder.decode_batch([(c.mode, c.payload) for c in coded])
        t_dec = time.time() - t
        if back != caps:
            raise SystemExit(f"[{name}] round-trip FAILED for {sum(a != b for a, b in zip(back, caps))} captions")
        sections = [record.pack_caption(c.mode, c.payload, t) for c, t in zip(coded, caps)]
        sizes["semarc-portable"] = [len(s) for s in sections]
        sizes["semarc-portable-payload"] = [len(c.payload) for c in coded]
        t = time.time()
        for b in range(0, len(caps), 16):
            lm32.score(coder.prefix, [lm32.tokenize(c) for c in caps[b:b + 16]])
        t_f32 = time.time() - t
        mean = {k: sum(v) / len(v) for k, v in sizes.items()}
        mean["ideal"] = sum(bits) / len(bits) / 8
        result["sets"][name] = {
            "n": len(caps), "mean_bytes": {k: round(v, 3) for k, v in mean.items()},
            "fallbacks": sum(c.mode == "fallback" for c in coded),
            "captions_per_s": {"semarc-portable-encode": round(len(caps) / t_enc, 3),
                               "semarc-portable-decode": round(len(caps) / t_dec, 3),
                               "float32-batched-scoring": round(len(caps) / t_f32, 3)},
        }
        print(json.dumps(result["sets"][name]), file=sys.stderr, flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "captions.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "captions.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    cols = ["raw", "zlib", "zstd", "brotli", "zstd-dict", "rank-zlib", "semarc-portable", "semarc-portable-payload",
            "ideal"]
    lines = ["# Caption coding: mean bytes per caption (each coded alone)", "",
             f"Command: `{r['command']}` (machine: {r['machine']}, torch threads: {r['torch_threads']}). "
             "`semarc-portable` is the whole stored section (1-byte header + arithmetic code + 1-byte check); "
             "`-payload` is the arithmetic code alone; `ideal` is the model's code length.", "",
             "| set | n | " + " | ".join(cols) + " | semarc / rank-zlib |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " | --- |"]
    for name, s in r["sets"].items():
        m = s["mean_bytes"]
        lines.append(f"| {name} | {s['n']} | " + " | ".join(f"{m[c]:.1f}" for c in cols)
                     + f" | {m['semarc-portable'] / m['rank-zlib']:.2f} |")
    lines += ["", "Captions per second on this machine:", "", "| set | " + " | ".join(
        next(iter(r["sets"].values()))["captions_per_s"]) + " |", "| --- |" + " --- |" * 3]
    for name, s in r["sets"].items():
        lines.append(f"| {name} | " + " | ".join(str(v) for v in s["captions_per_s"].values()) + " |")
    return "\n".join(lines) + "\n"
