"""``semarc train-eval --run DIR``: a training run's current state on the
corpus's validation split (never Kodak), for model selection.

The run's ``state.pt`` is exported as ``train-codec --export`` would export it
(entropy-bottleneck quantiles fitted, fp16 weights, integer tables) to
``DIR/eval/step-NNNNNNN.pt`` (kept: the state it came from is overwritten as
training goes on), and every validation image, whole, is coded by
``ImageCoder`` from that checkpoint: the real bytes (the whole image section,
header and check included) and the decoded pixels, scored by PSNR, MS-SSIM,
LPIPS-Alex and DISTS (LPIPS-VGG on request; ``semarc.metrics``). One line per
evaluation is appended to ``DIR/eval.jsonl``: the means over the images, the
means per source, and every image's figures.

``train-codec --eval-every N`` runs the same evaluation inside the training
process every N steps (after the state is saved; the training RNG states are
restored after it, so the run goes on as it would have without it).
"""

from __future__ import annotations

import json
import os
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

from .options import DEFAULT_EVAL_METRICS as DEFAULT_METRICS


def load_split(corpus_dir: str, split: str = "val", max_side: int | None = None) -> list[dict]:
    """The split's images as ``{"key", "source", "image", "caption"}`` (HxWx3
    uint8; the photo's caption from ``train/captions.py``, None where it has
    none), downscaled (Lanczos) so the long side is at most ``max_side`` when
    given."""
    from PIL import Image

    from semarc.codec.imageio import read_image

    from . import captions, corpus

    table = captions.load()
    rows = corpus.read_manifest(corpus_dir, split)
    if not rows:
        raise SystemExit(f"{corpus_dir}: no images in the {split!r} split")
    out = []
    for r in sorted(rows, key=lambda r: r["key"]):
        if "kodak" in r["path"].lower() or "kodim" in os.path.basename(r["path"]).lower():
            raise ValueError(f"refusing to select on Kodak ({r['path']}): Kodak is for the final report only")
        a = read_image(Path(r["path"]).read_bytes())
        if max_side and max(a.shape[:2]) > max_side:
            a = np.asarray(corpus.fit_long_side(Image.fromarray(a), max_side))
        out.append({"key": r["key"], "source": r["source"], "image": np.ascontiguousarray(a),
                    "caption": table.get(r["sha256"], {}).get("caption")})
    return out


def export_state(run: Path) -> tuple[int, Path]:
    """Export ``run/state.pt`` to ``run/eval/step-NNNNNNN.pt`` (unless there);
    returns (step, path)."""
    import torch

    from . import trainer

    st = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    step = int(st["step"])
    del st
    out = run / "eval" / f"step-{step:07d}.pt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + f".tmp{os.getpid()}.pt")
        res = trainer.export(run, str(tmp), Namespace(command_line=None))
        if res["step"] != step:  # the state moved on while we read it: name it by what was exported
            step = res["step"]
            out = out.with_name(f"step-{step:07d}.pt")
        os.replace(tmp, out)
    return step, out


def evaluate_checkpoint(ckpt: str | os.PathLike, images: list[dict], which=DEFAULT_METRICS, log=None) -> dict:
    """Code every image with ``ckpt`` (a text-guided point reads each image's
    ``caption``); returns the means, per-source means and per-image figures."""
    from semarc import metrics
    from semarc.codec import record
    from semarc.codec.image import ImageCoder

    coder = ImageCoder(str(ckpt))
    per = []
    for it in images:
        a = it["image"]
        t = time.time()
        c = coder.encode_batch([a], texts=[it.get("caption")])[0]
        section = record.pack_image(c.payload, c.check)
        back = coder.decode_batch([record.unpack_image(section)])[0]
        if isinstance(back, Exception):
            raise back
        scores = metrics.Scorer(a, tuple(which))(back)
        row = {"key": it["key"], "source": it["source"], "width": a.shape[1], "height": a.shape[0],
               "bytes": len(section), "bpp": metrics.bpp(len(section), a.shape[0] * a.shape[1]), **scores,
               "seconds": round(time.time() - t, 1)}
        per.append(row)
        if log:
            log(f"[train-eval] {it['key']}: " + " ".join(
                f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "seconds"))
    keys = ["bpp"] + [k for k in which if any(r.get(k) is not None for r in per)]

    def mean(rows):
        out = {}
        for k in keys:
            vals = [r[k] for r in rows if r.get(k) is not None]
            out[k] = round(float(np.mean(vals)), 6) if vals else None
        return out

    sources = sorted({r["source"] for r in per})
    return {"fingerprint": coder.describe()["fingerprint"], "images": len(per), **mean(per),
            "per_source": {s: {"images": sum(r["source"] == s for r in per), **mean([r for r in per if r["source"] == s])}
                           for s in sources},
            "per_image": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in per]}


def evaluate_run(run: str | os.PathLike, corpus_dir: str | None = None, split: str = "val",
                 which=DEFAULT_METRICS, max_side: int | None = None, log=print, checkpoint: str | None = None) -> dict:
    """Evaluate the run's current state (or ``checkpoint``, e.g. the point the
    run started from, recorded with ``"step": null``); appends the record to
    ``run/eval.jsonl``."""
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    corpus_dir = corpus_dir or cfg.get("corpus_dir")
    if not corpus_dir:
        raise SystemExit(f"{run} did not train on a corpus: give --corpus DIR (built by `semarc corpus DIR`)")
    from . import corpus

    if split == "train" or split not in corpus.SPLITS:
        raise SystemExit(f"--split {split}: model selection uses the held-out split (val)")
    t0 = time.time()
    step, ckpt = (None, Path(checkpoint)) if checkpoint else export_state(run)
    images = load_split(corpus_dir, split, max_side)
    res = evaluate_checkpoint(ckpt, images, which, log=log)
    rec = {"step": step, "split": split, "corpus_dir": str(Path(corpus_dir).expanduser().resolve()),
           "corpus_val": corpus.split_digest(corpus.read_manifest(corpus_dir, split)),
           **({"max_side": max_side} if max_side else {}), "checkpoint": str(ckpt), **res,
           "seconds": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "eval.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if log:
        log(f"[train-eval] step {step}: " + " ".join(
            f"{k} {rec[k]:.4f}" for k in ("bpp",) + tuple(which) if rec.get(k) is not None)
            + f" ({rec['images']} {split} images, {rec['seconds']:.0f} s)")
    return rec


def main(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    which = tuple(m for m in args.metrics.split(",") if m)
    evaluate_run(args.run, args.corpus, args.split, which, args.max_side, checkpoint=args.checkpoint)
    return 0

