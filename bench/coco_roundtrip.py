"""``semarc bench coco-roundtrip --out DIR``: every COCO val2017 caption
(25,014) encoded in the portable profile and decoded back, in other batches.

Encode runs in batches of ``--batch`` captions (the coder sorts each batch by
length); decode runs in batches of ``--decode-batch`` in file order, so every
caption is decoded in a batch of other captions than it was encoded with,
which exercises the profile's batch invariance. Progress is appended to
``DIR/coco_roundtrip.progress.jsonl`` after each chunk, so a stopped run
resumes where it stopped (``--resume`` is the default). Writes
``DIR/coco_roundtrip.json``: counts, failures (with the captions), fallbacks,
grid-B captions, bytes, and the command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def run(out_dir: str, shared: str = "../shared/data", chunk: int = 512, batch: int = 64, decode_batch: int = 48,
        threads: int = 1, limit: int | None = None) -> dict:
    import torch

    from semarc.codec.caption import CaptionCoder, CaptionError

    torch.set_num_threads(threads)
    caps = [a["caption"] for a in json.loads((Path(shared) / "coco_captions_val2017.json").read_text())["annotations"]]
    if limit:
        caps = caps[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prog = out / "coco_roundtrip.progress.jsonl"
    done = [json.loads(x) for x in prog.read_text().splitlines() if x.strip()] if prog.exists() else []
    start = sum(d["n"] for d in done)
    coder = CaptionCoder(batch_size=batch)
    fp = coder.describe()["fingerprint"]
    if any(d["fingerprint"] != fp for d in done):
        raise SystemExit(f"{prog} was made with another coder; delete it to start over")
    # how the decoder's steps ran (codec/lm_steps.py, codec/native.py): bytes do not depend on it
    steps = f"{getattr(coder.lm, 'steps_impl', 'n/a')}/{getattr(coder.lm, 'steps_kernels', None) or '-'}"
    for a in range(start, len(caps), chunk):
        part = caps[a:a + chunk]
        t = time.time()
        coded = coder.encode_batch(part)
        t_enc = time.time() - t
        old, coder.batch_size = coder.batch_size, decode_batch
        t = time.time()
        back = coder.decode_batch([c.payload for c in coded], errors="return")
        t_dec = time.time() - t
        coder.batch_size = old
        fails = [{"index": a + i, "caption": c, "got": (str(g) if isinstance(g, CaptionError) else g)}
                 for i, (c, g) in enumerate(zip(part, back)) if g != c]
        rec = {"start": a, "n": len(part), "fingerprint": fp, "encode_path": coder.encode_path,
               "decoder_steps": steps, "failures": fails,
               "fallbacks": sum(c.mode == "fallback" for c in coded),
               "grid_b": sum(c.mode == "lm" and c.grid == 1 for c in coded),
               "bytes": sum(len(c.payload) for c in coded), "encode_s": round(t_enc, 2), "decode_s": round(t_dec, 2)}
        with open(prog, "a") as f:
            f.write(json.dumps(rec) + "\n")
        done.append(rec)
        print(f"[coco-roundtrip] {a + len(part)}/{len(caps)} failures so far "
              f"{sum(len(d['failures']) for d in done)}", file=sys.stderr, flush=True)
    n = sum(d["n"] for d in done)
    result = {
        "command": f"semarc bench coco-roundtrip --out {out_dir} --batch {batch} --decode-batch {decode_batch} "
                   f"--threads {threads}" + (f" --limit {limit}" if limit else ""),
        "captions": n, "total_in_set": len(caps), "complete": n == len(caps),
        "encode_paths": sorted({d.get("encode_path", "steps") for d in done}),
        "decoder_steps": sorted({d.get("decoder_steps", "transformers") for d in done}),
        "failures": [f for d in done for f in d["failures"]],
        "fallbacks": sum(d["fallbacks"] for d in done), "grid_b": sum(d["grid_b"] for d in done),
        "mean_bytes": round(sum(d["bytes"] for d in done) / max(n, 1), 3),
        "encode_captions_per_s": round(n / max(sum(d["encode_s"] for d in done), 1e-9), 2),
        "decode_captions_per_s": round(n / max(sum(d["decode_s"] for d in done), 1e-9), 2),
        "profile": coder.describe(),
    }
    (out / "coco_roundtrip.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
