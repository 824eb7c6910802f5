"""The encode job: inputs -> Parquet shards of caption and image bitstreams.

Plan (fixed, reused on rerun) -> per shard, batches to the caption-coding and
image-coding actor pools -> rows -> shard published atomically with its
stats -> job manifest and ``_SUCCESS`` last. Finished shards (published,
same job id, the planned number of rows) are never redone.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import fsspec

from ..cluster.ray_cluster import ray_session, size_pools
from ..codec import image_models
from ..codec import lm as lm_mod
from ..codec import record
from . import plan as plan_mod
from .inputs import JobError, list_inputs
from .progress import Progress
from .shards import FORMAT, list_shards, publish, read_metadata, shard_name, shard_stats, write_shard

log = logging.getLogger("semarc.encode")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR_ROWS = 3


@dataclass
class EncodeOptions:
    codec: str = image_models.DEFAULT_CODEC
    caption_model: str = lm_mod.DEFAULT_MODEL
    caption_profile: str = "portable"
    shard_size: int = 256
    address: str | None = None
    num_cpus: int | None = None
    caption_batch: int = 64
    image_batch: int = 4
    caption_pool: int | None = None
    image_pool: int | None = None
    threads_per_actor: int = 1
    storage_options: dict = field(default_factory=dict)
    progress: bool = True

    def job_config(self) -> dict:
        return {"kind": "encode", "format": FORMAT, "codec": self.codec, "caption_model": self.caption_model,
                "caption_profile": self.caption_profile, "shard_size": self.shard_size}


@dataclass
class JobReport:
    records: int = 0
    ok: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0
    bytes_total: int = 0
    pixels: int = 0
    seconds: float = 0.0
    totals: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_ERROR_ROWS if self.errors else EXIT_OK


def _shard_done(fs, root: str, plan: plan_mod.Plan, i: int) -> bool:
    path = f"{root}/{shard_name(i)}.parquet"
    if not fs.exists(path):
        return False
    try:
        kv, n = read_metadata(fs, path)
        job = json.loads(kv.get("semarc.job", "{}"))
    except Exception:
        return False  # unreadable: redo it (it is overwritten atomically)
    return job.get("job_id") == plan.job_id and n == len(plan.shards[i])


def _row(rec, cap, img) -> dict:
    row = {"key": rec.key, "uri": rec.uri, "width": None, "height": None,
           "caption_source": "manifest" if rec.caption is not None else "none",
           "caption_fallback": False, "caption": None, "image": None,
           "bytes_caption": 0, "bytes_image": 0, "bytes_total": 0, "status": "ok", "error": None}
    errs = [r["error"] for r in (img, cap) if r and "error" in r]
    if errs:
        row.update(status="error", error="; ".join(errs))
        if img and "width" in img:
            row.update(width=img["width"], height=img["height"])
        return row
    row.update(width=img["width"], height=img["height"], image=img["section"], bytes_image=len(img["section"]))
    if cap is not None:
        row.update(caption=cap["section"], bytes_caption=len(cap["section"]), caption_fallback=cap["fallback"])
    row["bytes_total"] = row["bytes_caption"] + row["bytes_image"]
    return row


def _encode_shards(ray, fs, root: str, plan: plan_mod.Plan, pending: list[int], opts: EncodeOptions,
                   dst: str) -> None:
    """Encode and publish the pending shards, a window of shards in flight."""
    from ..workers.pool import codec_pools, gather, submit_batches

    res = ray.cluster_resources()
    specs = size_pools(res.get("CPU", 1), res.get("GPU", 0), opts.caption_batch, opts.image_batch,
                       opts.caption_pool, opts.image_pool)
    cap_pool, img_pool = codec_pools(specs, opts.caption_model, opts.caption_profile, opts.codec,
                                     opts.threads_per_actor, opts.storage_options)
    profiles = record.profile_table(cap_pool.first("describe"), img_pool.first("describe"))
    if plan.profiles is None:
        plan.profiles = profiles
        plan_mod.save(fs, root, plan)
    elif {k: v["fingerprint"] for k, v in plan.profiles.items()} != \
            {k: v["fingerprint"] for k, v in profiles.items()}:
        raise JobError(f"{dst} was written with other models or coding profiles; "
                       f"use the same ones (see {dst}/_job.json) or a new DST")
    pending_set = set(pending)
    progress = Progress(plan.n_records, enabled=opts.progress,
                        done=sum(len(s) for i, s in enumerate(plan.shards) if i not in pending_set))
    window = 2 * max(len(cap_pool.actors), len(img_pool.actors))
    queue = deque(pending)
    inflight: deque = deque()

    def submit(i: int):
        recs = plan.shards[i]
        cap_calls = submit_batches(cap_pool, "encode", [r.caption for r in recs], specs["caption"].batch_size)
        img_calls = submit_batches(img_pool, "encode", [r.uri for r in recs], specs["image"].batch_size)
        inflight.append((i, cap_calls, img_calls))

    def count(got: list) -> None:
        progress.update(len(got), errors=sum(1 for g in got if "error" in g))

    while queue or inflight:
        while queue and len(inflight) < window:
            submit(queue.popleft())
        i, cap_calls, img_calls = inflight.popleft()
        recs = plan.shards[i]
        imgs = gather(img_pool, img_calls, len(recs), count)
        caps = gather(cap_pool, cap_calls, len(recs))
        rows = [_row(r, c, m) for r, c, m in zip(recs, caps, imgs)]
        stats = shard_stats(rows)
        meta = {"semarc.format": FORMAT,
                "semarc.profiles": json.dumps(plan.profiles, sort_keys=True),
                "semarc.job": json.dumps({"job_id": plan.job_id, "shard": i, "shards": len(plan.shards),
                                          "config": plan.config}, sort_keys=True),
                "semarc.stats": json.dumps(stats, sort_keys=True)}
        write_shard(fs, root, i, rows, meta, {"shard": shard_name(i), **stats})
        if not _shard_done(fs, root, plan, i):  # read back what was published
            raise JobError(f"shard {shard_name(i)} did not read back after publishing")
    progress.close()



def run_encode(src: str, dst: str, opts: EncodeOptions | None = None) -> JobReport:
    opts = opts or EncodeOptions()
    t0 = time.time()
    fs, root = fsspec.core.url_to_fs(dst, **opts.storage_options)
    root = root.rstrip("/")
    plan = plan_mod.load(fs, root)
    if plan is None:
        records = list_inputs(src, opts.storage_options)  # job-level errors surface before any work
        plan = plan_mod.make(records, opts.shard_size, opts.job_config())
    elif plan.config != opts.job_config():
        raise JobError(f"{dst} holds a job with another configuration {plan.config}; "
                       f"rerun with the same options or use a new DST")
    report = JobReport(records=plan.n_records, shards=len(plan.shards))
    pending = [i for i in range(len(plan.shards)) if not _shard_done(fs, root, plan, i)]
    report.shards_skipped = len(plan.shards) - len(pending)

    if pending:
        with ray_session(opts.address, opts.num_cpus) as ray:
            _encode_shards(ray, fs, root, plan, pending, opts, dst)

    # totals over every shard (finished earlier or now), from the shards' own footers
    totals = {"records": 0, "ok": 0, "errors": 0, "caption_fallbacks": 0, "bytes_caption": 0,
              "bytes_image": 0, "bytes_total": 0, "pixels": 0}
    for p in list_shards(fs, root):
        kv, _ = read_metadata(fs, p)
        s = json.loads(kv["semarc.stats"])
        for k in totals:
            totals[k] += s.get(k, 0)
    totals["bpp"] = 8.0 * totals["bytes_total"] / totals["pixels"] if totals["pixels"] else None
    report.ok, report.errors = totals["ok"], totals["errors"]
    report.bytes_total, report.pixels = totals["bytes_total"], totals["pixels"]
    report.seconds = time.time() - t0
    report.totals = totals
    if totals["records"] != plan.n_records:
        raise JobError(f"shards hold {totals['records']} records but the plan has {plan.n_records}")
    manifest = {"job_id": plan.job_id, "config": plan.config, "profiles": plan.profiles,
                "shards": [shard_name(i) for i in range(len(plan.shards))], "totals": totals,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    publish(fs, f"{root}/_manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    publish(fs, f"{root}/_SUCCESS", json.dumps({"job_id": plan.job_id, **totals}, sort_keys=True).encode())
    return report
