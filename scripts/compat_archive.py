"""Write the back-compatibility archive of a shipped checkpoint.

    python scripts/compat_archive.py CHECKPOINT [CHECKPOINT ...]

For each checkpoint id this writes ``tests/data/compat/<CHECKPOINT>/``: a small
archive made by ``semarc encode manifest.jsonl DST --codec CHECKPOINT
--num-cpus 1`` from three captioned crops of scikit-image photos (below), and
records in ``tests/data/compat/expected.json`` what this semarc decodes from it
(one torch thread, the job's workers in this process), with the commit that
wrote it. ``tests/test_compat.py`` then holds every later semarc to exactly
those captions and pixels. Run it once, when a checkpoint first ships; an
existing archive is refused, never rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "compat"

# (key, scikit-image photo, its size after a Lanczos resize (width, height), then the crop's rows and
# columns, caption): 96x64, 64x96 and 96x72 crops
CROPS = [
    ("astronaut", "astronaut", (192, 192), (8, 72), (44, 140),
     "A smiling astronaut's face, short brown hair, a white collar."),
    ("chelsea", "chelsea", (150, 100), (2, 98), (45, 109),
     "The head of a tabby cat with green eyes and white whiskers."),
    ("coffee", "coffee", (150, 100), (14, 86), (27, 123),
     "A red cup of espresso with crema on a saucer, caf\u00e9 style."),
]


def _pixels_sha256(a) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def write_inputs(folder: Path) -> Path:
    import skimage.data
    from PIL import Image

    lines = []
    for key, photo, size, (r0, r1), (c0, c1), caption in CROPS:
        im = Image.fromarray(getattr(skimage.data, photo)()).resize(size, Image.Resampling.LANCZOS)
        im.crop((c0, r0, c1, r1)).save(folder / f"{key}.png")
        lines.append(json.dumps({"uri": f"{key}.png", "key": key, "caption": caption}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.jsonl"


def decoded(dst: Path) -> dict:
    """What this semarc decodes from the archive at ``dst`` (as tests/test_compat.py decodes it)."""
    import fsspec
    import torch

    from semarc.jobs.shards import read_shard
    from semarc.workers.caption_worker import CaptionWorker
    from semarc.workers.image_worker import ImageWorker

    torch.set_num_threads(1)
    table, meta = read_shard(fsspec.filesystem("file"), str(dst / "part-00000.parquet"))
    profiles = json.loads(meta["semarc.profiles"])
    rows = table.to_pylist()
    images = ImageWorker(profiles["image"]["codec"], threads=1).decode_arrays([r["image"] for r in rows], profiles)
    captions = CaptionWorker(profiles["caption"]["model"], profiles["caption"]["profile"], threads=1).decode(
        [r["caption"] for r in rows], profiles)
    records = {}
    for r, a, c in zip(rows, images, captions):
        if not hasattr(a, "shape"):
            raise SystemExit(f"{dst}: record {r['key']} did not decode: {a}")
        records[r["key"]] = {"caption": c.get("caption"), "width": int(a.shape[1]), "height": int(a.shape[0]),
                             "pixels_sha256": _pixels_sha256(a),
                             "image_section_sha256": hashlib.sha256(r["image"]).hexdigest()}
    return {"checkpoint": profiles["image"]["codec"], "fingerprint": profiles["image"]["fingerprint"],
            "caption_fingerprint": profiles["caption"]["fingerprint"], "records": records}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint ids of shipped points (codec/weights/<id>.pt)")
    args = ap.parse_args(argv)
    expected_path = DATA / "expected.json"
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    for ckpt in args.checkpoints:
        dst = DATA / ckpt
        if dst.exists() or ckpt in expected["archives"]:
            raise SystemExit(f"{dst} exists: a compatibility archive is written once and never rewritten")
        with tempfile.TemporaryDirectory() as tmp:
            manifest = write_inputs(Path(tmp))
            env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
            r = subprocess.run([sys.executable, "-m", "semarc.cli", "encode", str(manifest), str(dst), "--codec",
                                ckpt, "--num-cpus", "1", "--no-progress"], env=env, cwd=REPO)
            if r.returncode != 0:
                raise SystemExit(f"semarc encode failed for {ckpt} (exit {r.returncode})")
        got = decoded(dst)
        if got["checkpoint"] != ckpt:
            raise SystemExit(f"{dst}: the footer names {got['checkpoint']}, not {ckpt}")
        got["written_by"] = f"semarc {commit}: python scripts/compat_archive.py {ckpt}"
        expected["archives"][ckpt] = got
        expected_path.write_text(json.dumps(expected, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
        print(f"{dst}: {len(got['records'])} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
