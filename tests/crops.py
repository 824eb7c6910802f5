"""Small encode inputs for the multi-process job tests: crops of the bundled
sample photos (``semarc sample``), every one with a caption, a few of them
corrupt (those become error rows), and a manifest beside them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import run_cli


def make_crops(base: Path, n: int, size: tuple[int, int] = (128, 96), corrupt: tuple[int, ...] = (5, 18)) -> dict:
    """``n`` crops under ``base/crops`` and ``base/manifest.jsonl``. Returns
    {"manifest", "keys" (in manifest order), "corrupt" (their keys)}."""
    from PIL import Image

    base.mkdir(parents=True, exist_ok=True)
    r = run_cli("sample", base / "sample")
    assert r.returncode == 0, r.stderr[-2000:]
    photos = [(p.stem, Image.open(p).convert("RGB")) for p in sorted((base / "sample" / "images").iterdir())]
    (base / "crops").mkdir(exist_ok=True)
    w, h = size
    rows, bad = [], set()
    for i in range(n):
        name, im = photos[i % len(photos)]
        x, y = (i * 37) % (im.width - w), (i * 53) % (im.height - h)
        buf = io.BytesIO()
        fmt = "PNG" if i % 2 else "JPEG"
        im.crop((x, y, x + w, y + h)).save(buf, fmt)
        data = buf.getvalue()
        key = f"c{i:03d}"
        if i in corrupt:
            data = data[: len(data) // 3]
            bad.add(key)
        uri = f"crops/{i:03d}.{fmt.lower()}"
        (base / uri).write_bytes(data)
        rows.append({"uri": uri, "key": key,
                     "caption": f"crop {i} of the {name} photo, {w} by {h} pixels, from the sample set"})
    manifest = base / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return {"manifest": manifest, "keys": [x["key"] for x in rows], "corrupt": bad}


def check_exactly_once(tables: list, data: dict) -> None:
    """Every input in exactly one row over ``tables`` (pyarrow tables of
    shards), the corrupt ones as error rows and only they."""
    keys, status = [], {}
    for t in tables:
        keys += t["key"].to_pylist()
        status.update(zip(t["key"].to_pylist(), t["status"].to_pylist()))
    assert len(keys) == len(data["keys"]) and sorted(keys) == sorted(data["keys"]), "lost or duplicated records"
    assert {k for k, s in status.items() if s == "error"} == data["corrupt"]
