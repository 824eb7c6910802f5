"""The encode job: inputs -> Parquet shards of caption and image bitstreams.

Plan (fixed, reused on rerun) -> per shard, batches to the caption-coding and
image-coding actor pools (and, with a captioner, first to the captioning pool
for the records that have no manifest caption), a window of shards in flight
(``scheduler.py``) -> rows -> shard published atomically with its stats ->
job manifest and ``_SUCCESS`` last (``sink.ShardSink``). Finished shards
(published, same job id, the planned number of rows) are never redone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import fsspec

from ..cluster.ray_cluster import ray_session, size_pools
from ..codec import record
from . import plan as plan_mod
from .inputs import JobError, iter_inputs
from .options import EncodeOptions  # noqa: F401 - re-exported: the encode job's options
from .progress import Progress
from .scheduler import run_shards, window_for
from .sink import ShardSink

log = logging.getLogger("semarc.encode")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR_ROWS = 3


@dataclass
class JobReport:
    records: int = 0
    ok: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0
    shards_by_other: int = 0  # published by another driver of this job while this one ran (counted as skipped too)
    bytes_total: int = 0
    pixels: int = 0
    seconds: float = 0.0
    totals: dict = field(default_factory=dict)
    # per pool: busy seconds, items, utilisation since the pools started (workers.meter; this run only)
    stages: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_ERROR_ROWS if self.errors else EXIT_OK


def ensure_loaded(ray, pool, what: str) -> None:
    """Wait for a pool's first actor to load its model: one that cannot load
    fails the job here (JobError, the cause's last line), not every record."""
    try:
        pool.first("describe")
    except ray.exceptions.RayError as e:
        why = [x for x in str(e).strip().splitlines() if x.strip()][-1:] or [type(e).__name__]
        raise JobError(f"{what} cannot load: {why[0].strip()}") from e


def _row(rec, cap, img, source: str | None = None) -> dict:
    row = {"key": rec.key, "uri": rec.uri, "width": None, "height": None,
           "caption_source": source or ("manifest" if rec.caption is not None else "none"),
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


def _encode_shards(ray, sink: ShardSink, pending: list[int], opts: EncodeOptions, dst: str,
                   report: JobReport) -> None:
    """Encode the pending shards through the pools (``scheduler.run_shards``)
    into ``sink``; the pools' ``stage_report`` goes to ``report.stages``.
    Another driver of the same job may have published its plan first: then
    this one follows it (``sink.plan``)."""
    from ..workers.pool import (captioner_pool, codec_pools, gather, gather_sparse, stage_report, submit_batches,
                                submit_sparse)

    plan = sink.plan
    res = ray.cluster_resources()
    specs = size_pools(res.get("CPU", 1), res.get("GPU", 0), **opts.coding_pools(), captioner=bool(opts.captioner),
                       captioner_batch=opts.captioner_batch, captioner_pool=opts.captioner_pool,
                       captioner_gpus=opts.captioner_gpus)
    caption_model = opts.caption_model
    if opts.one_lmm:  # the captioner's language model, as a causal-LM folder (cached; see generate/captioner.py)
        from ..generate.captioner import export_text_lm

        caption_model = export_text_lm(opts.captioner)
    t_pools = time.time()
    cpt_pool = None
    if opts.captioner and any(r.caption is None for i in pending for r in plan.records(i)):
        # started first: the largest model loads while the coders load
        cpt_pool = captioner_pool(specs["captioner"], opts.captioner_config().to_dict(), opts.threads_per_actor,
                                  opts.storage_options)
    cap_pool, img_pool = codec_pools(specs, caption_model, opts.caption_profile, opts.codec,
                                     opts.threads_per_actor, opts.storage_options, opts.latent_steps,
                                     opts.latent_loss)
    if cpt_pool is not None:
        ensure_loaded(ray, cpt_pool, f"the captioner {opts.captioner!r} ({opts.captioner_backend})")
    image_profile = img_pool.first("describe")
    # a text-guided image point (codec/text_guided.py) encodes each record with its caption
    text_guided = "text_encoder" in (image_profile.get("config") or {})
    profiles = record.profile_table(cap_pool.first("describe"), image_profile)
    if plan.profiles is None:  # the job starts work: from here on it exists in DST
        plan.profiles = profiles
        followed = plan_mod.publish_plan(sink.fs, sink.root, plan)
        if followed is not plan:  # another driver of this job, started at the same time, published first
            if followed.config != plan.config:
                raise JobError(f"{dst} holds a job with another configuration {followed.config} (written meanwhile "
                               f"by another driver); rerun with the same options or use a new DST")
            log.warning("another driver of this job published its plan first (job %s); following it",
                        followed.job_id)
            plan = sink.plan = followed
            pending = sink.pending()
            report.records, report.shards = plan.n_records, plan.n_shards
            report.shards_skipped = plan.n_shards - len(pending)
    if {k: v["fingerprint"] for k, v in plan.profiles.items()} != \
            {k: v["fingerprint"] for k, v in profiles.items()}:
        raise JobError(f"{dst} was written with other models or coding profiles; "
                       f"use the same ones (see {dst}/_job.json) or a new DST")
    pending_set = set(pending)
    progress = Progress(plan.n_records, enabled=opts.progress,
                        done=sum(plan.shard_len(i) for i in range(plan.n_shards) if i not in pending_set))

    def submit(i: int) -> tuple:
        recs = plan.records(i)
        gen = [j for j, r in enumerate(recs) if r.caption is None] if cpt_pool is not None else []
        cpt_calls = submit_batches(cpt_pool, "caption", [recs[j].uri for j in gen],
                                   specs["captioner"].batch_size) if gen else []
        # caption coding waits for the generated captions; without any it starts now
        # only the records with a caption go to the caption coders: full batches of captions
        cap_calls = None if gen else submit_sparse(cap_pool, "encode", [r.caption for r in recs],
                                                   specs["caption"].batch_size)
        # a text-guided point's image coding, too, waits for the generated captions
        img_calls = None if text_guided and gen else submit_batches(
            img_pool, "encode", [(r.uri, r.caption) if text_guided else r.uri for r in recs],
            specs["image"].batch_size)
        return recs, gen, cpt_calls, cap_calls, img_calls

    def count(got: list) -> None:
        progress.update(len(got), errors=sum(1 for g in got if "error" in g))

    def finish(i: int, work: tuple) -> None:
        recs, gen, cpt_calls, cap_calls, img_calls = work
        texts = [r.caption for r in recs]
        sources: list = [None] * len(recs)
        gen_errors: dict[int, dict] = {}
        if gen:
            got = gather(cpt_pool, cpt_calls, len(gen),
                         on_error=lambda e: {"error": f"caption: captioner failed: {type(e).__name__}: "
                                                      f"{str(e)[-500:]}"})
            for j, g in zip(gen, got):
                if "caption" in g:
                    texts[j], sources[j] = g["caption"], "generated"
                else:
                    gen_errors[j] = g
            cap_calls = submit_sparse(cap_pool, "encode", texts, specs["caption"].batch_size)
            if img_calls is None:
                img_calls = submit_batches(img_pool, "encode", [(r.uri, t) for r, t in zip(recs, texts)],
                                           specs["image"].batch_size)
        imgs = gather(img_pool, img_calls, len(recs), count)
        caps = gather_sparse(cap_pool, cap_calls, len(recs))
        for j, e in gen_errors.items():
            caps[j] = e
        sink.write(i, [_row(r, c, m, s) for r, c, m, s in zip(recs, caps, imgs, sources)])

    def skip(i: int) -> bool:  # published by another driver of this job: not done twice
        if not sink.published_meanwhile(i):
            return False
        progress.update(plan.shard_len(i))
        return True

    by_other = run_shards(pending, window_for(cpt_pool, cap_pool, img_pool), submit, finish, skip=skip)
    by_other += sink.by_other  # and those it published first while this one encoded them: kept
    progress.close()
    if by_other:
        log.warning("%d shard(s) were published by another driver of this job while this one ran; "
                    "each is kept as first published", by_other)
        report.shards_by_other = by_other
        report.shards_skipped += by_other
    report.stages = stage_report({"captioning": cpt_pool, "caption coding": cap_pool, "image coding": img_pool},
                                 time.time() - t_pools)


def run_encode(src: str, dst: str, opts: EncodeOptions | None = None) -> JobReport:
    opts = opts or EncodeOptions()
    with plan_mod.scratch() as folder:
        return _run_encode(src, dst, opts, folder)


def _run_encode(src: str, dst: str, opts: EncodeOptions, scratch: str) -> JobReport:
    t0 = time.time()
    fs, root = fsspec.core.url_to_fs(dst, **opts.storage_options)
    root = root.rstrip("/")
    plan = plan_mod.load(fs, root)
    if plan is None:
        # streamed into local plan parts; job-level errors (even in the last row) surface before any work
        plan = plan_mod.make(iter_inputs(src, opts.storage_options), opts.shard_size, opts.job_config(), scratch)
    elif plan.config != opts.job_config():
        raise JobError(f"{dst} holds a job with another configuration {plan.config}; "
                       f"rerun with the same options or use a new DST")
    report = JobReport(records=plan.n_records, shards=plan.n_shards)
    sink = ShardSink(fs, root, plan)
    pending = sink.pending()
    report.shards_skipped = plan.n_shards - len(pending)

    if pending:
        with ray_session(opts.address, opts.num_cpus) as ray:
            _encode_shards(ray, sink, pending, opts, dst, report)
    report.totals = totals = sink.on_complete()
    report.ok, report.errors = totals["ok"], totals["errors"]
    report.bytes_total, report.pixels = totals["bytes_total"], totals["pixels"]
    report.seconds = time.time() - t0
    return report
