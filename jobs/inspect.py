"""``semarc inspect``: per-shard and total figures, from the bytes in the shards.

Every figure is recomputed from the shards' columns (the lengths of the
caption and image sections actually stored), not from the footers' stats.
Works on a partial job (whatever shards are published).
"""

from __future__ import annotations

import json

import fsspec
import pyarrow.compute as pc

from .inputs import JobError
from .shards import list_shards, read_shard


def inspect(path: str, storage_options: dict | None = None) -> dict:
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    root = root.rstrip("/")
    paths = [root] if root.endswith(".parquet") else list_shards(fs, root)
    if not paths:
        raise JobError(f"no shards (part-*.parquet) under {path}")
    shards, profiles = [], {}
    tot = {"records": 0, "ok": 0, "errors": 0, "caption_fallbacks": 0, "bytes_caption": 0, "bytes_image": 0,
           "bytes_total": 0, "pixels": 0}
    for p in paths:
        t, meta = read_shard(fs, p, columns=["status", "width", "height", "caption", "image", "caption_fallback"])
        okm = pc.equal(t["status"], "ok")
        ok = t.filter(okm)
        bc = pc.sum(pc.fill_null(pc.binary_length(ok["caption"]), 0)).as_py() or 0
        bi = pc.sum(pc.fill_null(pc.binary_length(ok["image"]), 0)).as_py() or 0
        px = pc.sum(pc.multiply(ok["width"].cast("int64"), ok["height"].cast("int64"))).as_py() or 0
        s = {"shard": p.rsplit("/", 1)[-1], "records": t.num_rows, "ok": ok.num_rows,
             "errors": t.num_rows - ok.num_rows,
             "caption_fallbacks": pc.sum(pc.fill_null(ok["caption_fallback"], False).cast("int64")).as_py() or 0,
             "bytes_caption": bc, "bytes_image": bi, "bytes_total": bc + bi, "pixels": px}
        s["bpp"] = 8.0 * s["bytes_total"] / px if px else None
        shards.append(s)
        for k in tot:
            tot[k] += s[k]
        for slot, d in json.loads(meta.get("semarc.profiles", "{}")).items():
            profiles.setdefault(slot, d)
    tot["bpp"] = 8.0 * tot["bytes_total"] / tot["pixels"] if tot["pixels"] else None
    tot["bpp_caption"] = 8.0 * tot["bytes_caption"] / tot["pixels"] if tot["pixels"] else None
    tot["bpp_image"] = 8.0 * tot["bytes_image"] / tot["pixels"] if tot["pixels"] else None
    complete = fs.exists(f"{root}/_SUCCESS") if not root.endswith(".parquet") else None
    return {**tot, "shards": shards, "complete": complete,
            "profiles": {slot: {k: d.get(k) for k in ("kind", "coder", "profile", "model", "codec", "arch",
                                                       "backend", "precision", "fingerprint") if k in d}
                         for slot, d in sorted(profiles.items())}}


def format_table(r: dict) -> str:
    cols = ["shard", "records", "ok", "errors", "bytes_caption", "bytes_image", "bytes_total", "pixels", "bpp"]
    rows = [[str(s[c]) if c != "bpp" else (f"{s[c]:.5f}" if s[c] is not None else "-") for c in cols]
            for s in r["shards"]]
    rows.append(["TOTAL"] + [str(r[c]) for c in cols[1:-1]] + [f"{r['bpp']:.5f}" if r["bpp"] is not None else "-"])
    w = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w[i]) if i else x.ljust(w[i]) for i, x in enumerate(xs))  # noqa: E731
    out = [line(cols), line(["-" * n for n in w])] + [line(x) for x in rows]
    out.append(f"job complete: {r['complete']}; caption fallbacks: {r['caption_fallbacks']}")
    for slot, d in r["profiles"].items():
        out.append(f"slot {slot}: " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "fingerprint")
                   + f", fingerprint={str(d.get('fingerprint'))[:16]}")
    return "\n".join(out)
