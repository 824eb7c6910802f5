"""``semarc bench read --out DIR``: decode throughput of ``semarc.read``
against the decode job, on the same archive and the same Ray cluster, side by
side in one run.

Inputs: ``--records`` distinct ``--crop``-pixel crops of the bundled sample
photos, each with a COCO val2017 caption (shuffled, seed 0; as ``bench
pipeline``), encoded once with ``--codec`` (default ``semarc-fast``) into
shards of ``--shard-size`` records. One local Ray cluster of ``--num-cpus``
CPUs is started and holds both:

* ``job``: ``semarc.decode(archive, DST)`` (images written as PNG, captions
  to captions.jsonl), its pools sized by the job from the cluster
  (``size_pools``: one caption and one image actor on 2 CPUs);
* ``read``: ``semarc.read(archive, concurrency=A)`` consumed with
  ``iter_batches``, ``A`` = the job's number of actors (the same CPUs).

Each is timed from the call to its last record, actor start-up and model
loading included, in the order job, read, read, job (``--repeats`` such
rounds), so a drift in the machine's load falls on both alike. Throughput =
records / wall time; the figure of each is the median of its runs; ``ratio``
= read / job (the target: above 0.9). Every run of ``read`` is checked
against the first decode job's output: the same captions, the same pixels.

Writes ``DIR/read.json`` and ``DIR/read.md``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

CODEC = "semarc-fast"


def _read_all(archive: str, actors: int) -> tuple[int, int, dict]:
    """Consume ``semarc.read``; returns (records, error rows, {key: (caption, image)})."""
    import semarc

    n = errors = 0
    got = {}
    for b in semarc.read(archive, concurrency=actors).iter_batches(batch_size=64, batch_format="numpy"):
        for k, cap, im, e in zip(b["key"], b["caption"], b["image"], b["error"]):
            n += 1
            errors += e is not None
            got[k] = (cap, im)
    return n, errors, got


def _check(got: dict, dec: Path) -> dict:
    import numpy as np
    from PIL import Image

    caps = {json.loads(x)["key"]: json.loads(x)["caption"] for x in (dec / "captions.jsonl").read_text().splitlines()}
    same_caps = set(caps) == set(got) and all(got[k][0] == c for k, c in caps.items())
    same_px = all(np.array_equal(np.asarray(Image.open(dec / "images" / f"{k}.png")), got[k][1]) for k in caps)
    return {"same_captions": same_caps, "same_pixels": same_px}


def run(out_dir: str, records: int = 200, crop: int = 128, num_cpus: int = 2, shard_size: int = 50,
        repeats: int = 2, codec: str | None = None, shared: str = "../shared/data", work: str | None = None,
        command_line: str | None = None) -> dict:
    import ray

    import semarc
    from semarc.bench.captions import coco_shuffled
    from semarc.bench.pipeline import _make_inputs
    from semarc.cluster.ray_cluster import size_pools

    codec = codec or CODEC
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="semarc-bench-read-") if work is None else None
    d = Path(work or tmp.name)
    _make_inputs(d, records, crop, coco_shuffled(Path(shared)), 1)
    archive = str(d / "archive")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        t = time.perf_counter()
        enc = semarc.encode(str(d / f"manifest-{records}.jsonl"), archive, codec=codec, shard_size=shard_size,
                            progress=False)
        encode_s = time.perf_counter() - t
        assert enc.ok == records, enc
        specs = size_pools(num_cpus, 0)
        actors = sum(s.size for s in specs.values())
        runs = []
        checks = []
        first_dec = None
        for r in range(repeats):
            for what in ("job", "read", "read", "job"):
                t = time.perf_counter()
                if what == "job":
                    dst = d / f"dec-{len(runs)}"
                    rep = semarc.decode(archive, str(dst), progress=False)
                    n, errors = rep.decoded, rep.errors
                    first_dec = first_dec or dst
                else:
                    n, errors, got = _read_all(archive, actors)
                wall = time.perf_counter() - t
                if what == "read":
                    checks.append(_check(got, first_dec))
                    del got
                runs.append({"what": what, "round": r, "records": n, "errors": errors, "wall_s": round(wall, 2),
                             "img_per_s": round(n / wall, 3)})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        ray.shutdown()
        if tmp is not None:
            tmp.cleanup()
    med = {w: statistics.median(x["img_per_s"] for x in runs if x["what"] == w) for w in ("job", "read")}
    result = {
        "command": command_line, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "records": records, "crop": crop, "codec": codec, "shard_size": shard_size, "num_cpus": num_cpus,
        "job_pools": {k: {"size": s.size, "batch": s.batch_size} for k, s in specs.items()},
        "read_actors": actors, "encode_s": round(encode_s, 1), "runs": runs,
        "job_img_per_s": round(med["job"], 3), "read_img_per_s": round(med["read"], 3),
        "ratio": round(med["read"] / med["job"], 3),
        "read_matches_job": all(c["same_captions"] and c["same_pixels"] for c in checks),
        "complete": all(x["records"] == records and x["errors"] == 0 for x in runs),
    }
    (out / "read.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "read.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["# semarc.read against the decode job", "",
             f"Command: `{r['command']}` ({r['machine']}; one local Ray cluster of {r['num_cpus']} CPUs for both).",
             "",
             f"Archive: {r['records']} crops {r['crop']}x{r['crop']} of the bundled photos with COCO captions, "
             f"`{r['codec']}`, {r['shard_size']} records per shard. The decode job's pools: "
             f"{json.dumps(r['job_pools'])}; `semarc.read` with `concurrency={r['read_actors']}` (the same CPUs). "
             f"Each run is timed from the call to its last record (actor start-up and model loading included), "
             f"in the order job, read, read, job.", "",
             "| run | what | records | wall (s) | img/s |", "| --- | --- | --- | --- | --- |"]
    for i, x in enumerate(r["runs"]):
        lines.append(f"| {i + 1} | {x['what']} | {x['records']} | {x['wall_s']} | {x['img_per_s']} |")
    lines += ["", f"Median throughput: decode job {r['job_img_per_s']} img/s, `semarc.read` "
                  f"{r['read_img_per_s']} img/s; **ratio read / job = {r['ratio']}** (target: at least 0.9). "
                  f"`semarc.read` gave the decode job's captions and pixels exactly: {r['read_matches_job']}.", ""]
    return "\n".join(lines)
