"""The decode job: Parquet shards -> images and captions.

Writes ``DST/images/<key>.<format>`` (key folders kept, made path-safe) and
``DST/captions.jsonl`` (one ``{"key", "caption"}`` per decoded record, in
shard order). Per shard, the images are written first, then
``DST/_parts/part-NNNNN.jsonl`` (published atomically) marks the shard done, so a
rerun skips finished shards (``sink.DecodeSink``). Shards stream through the
actor pools with a window of twice the larger pool in flight
(``scheduler.py``). Records that cannot be decoded exactly are listed in
``DST/errors.jsonl`` and make the exit status non-zero.

With ``refiner`` (a diffusers image-to-image model, ``generate/refiner.py``), a
third pool redraws each decoded image conditioned on its caption: the image
coders return arrays, which go from the object store straight to a refiner
actor with their captions; the refined images are written. ``DST/_decode.json``
records the refinement options; a rerun with other options is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import fsspec

from ..cluster.ray_cluster import ray_session, size_pools
from ..codec import zoo
from .encode import EXIT_ERROR_ROWS, EXIT_OK, ensure_loaded
from .inputs import JobError
from .keys import safe_relpath
from .options import DecodeOptions  # noqa: F401 - re-exported: the decode job's options
from .progress import Progress
from .plan import load as load_plan
from .scheduler import run_shards, window_for
from .shards import FORMAT, ShardError, list_shards, open_shard, read_metadata
from .sink import DecodeSink


@dataclass
class DecodeReport:
    records: int = 0
    decoded: int = 0
    errors: int = 0
    skipped_error_rows: int = 0
    shards: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # as JobReport.stages (jobs/encode.py)

    @property
    def exit_code(self) -> int:
        return EXIT_ERROR_ROWS if self.errors else EXIT_OK


def _select(paths: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return paths
    names = {str(w) if not str(w).isdigit() else f"part-{int(w):05d}" for w in wanted}
    sel = [p for p in paths if p.rsplit("/", 1)[-1].removesuffix(".parquet") in names]
    missing = names - {p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in sel}
    if missing:
        raise JobError(f"no such shard(s): {sorted(missing)}")
    return sel


def run_decode(src: str, dst: str, opts: DecodeOptions | None = None) -> DecodeReport:
    opts = opts or DecodeOptions()
    t0 = time.time()
    sfs, sroot = fsspec.core.url_to_fs(src, **opts.storage_options)
    dfs, droot = fsspec.core.url_to_fs(dst, **opts.storage_options)
    sroot, droot = sroot.rstrip("/"), droot.rstrip("/")
    paths, profiles, expect = open_archive(sfs, sroot, src, opts.shards, opts.codec)
    report = DecodeReport(shards=len(paths))
    ref_cfg = opts.refiner_config()
    sink = DecodeSink(dfs, droot, ref_cfg)
    pending = sink.pending(paths)
    report.shards_skipped = len(paths) - len(pending)
    keys = set(opts.keys) if opts.keys else None
    sink.on_start(dst, bool(pending))  # a rerun must use the same refinement (or none)

    if pending:
        with ray_session(opts.address, opts.num_cpus) as ray:
            report.stages = _decode_shards(ray, sfs, sink, dst, pending, profiles, keys, opts, expect)
    report.decoded, report.errors = sink.on_complete(paths)
    report.records = report.decoded + report.errors
    if keys is None:
        report.skipped_error_rows = sum(_stat(sfs, p, "errors") for p in paths)
    report.seconds = time.time() - t0
    return report


def open_archive(fs, root: str, url: str, shards, codec: str | None) -> tuple[list[str], dict, dict[str, int]]:
    """The shards of an archive to read (``shards``: names or indices; all by
    default), its profile table (from the first shard whose footer parses),
    and each shard's planned row count where the archive has a job plan.
    Raises JobError on an archive that cannot be read at all, and before any
    work on one whose image codec (``codec``, else the one it names) was
    retired."""
    paths = _select(list_shards(fs, root), shards)
    if not paths:
        raise JobError(f"no shards (part-*.parquet) under {url}")
    kv = _first_footer(fs, paths)
    if "semarc.profiles" not in kv:
        raise JobError(f"{paths[0]} is not a semarc shard (no semarc.profiles in its footer)")
    if kv.get("semarc.format") != FORMAT:
        raise JobError(f"{paths[0]} is record format {kv.get('semarc.format')!r}; this semarc reads format {FORMAT}")
    profiles = json.loads(kv["semarc.profiles"])
    img_codec = codec or (profiles.get("image") or {}).get("codec")
    if img_codec in zoo.RETIRED:  # the shards name a checkpoint this semarc no longer has
        raise JobError(zoo.retired_message(img_codec))
    try:  # the job's plan, where the archive has one: each shard must hold its planned rows
        plan = load_plan(fs, root)
    except (JobError, OSError, ValueError, KeyError, TypeError):
        plan = None
    expect = {}
    if plan is not None:
        for p in paths:
            i = _shard_index(p)
            if i is not None and i < plan.n_shards:
                expect[p] = plan.shard_len(i)
    return paths, profiles, expect


def _first_footer(fs, paths: list[str]) -> dict[str, str]:
    """The footer of the first shard whose footer parses (a corrupt shard is
    reported when its turn comes, and does not stop the others)."""
    last = None
    for p in paths:
        try:
            return read_metadata(fs, p)[0]
        except Exception as e:  # that shard is reported (or retried) when its turn comes
            last = e
    raise JobError(f"no shard under {paths[0].rsplit('/', 1)[0]} has a readable Parquet footer "
                   f"({type(last).__name__}: {last})")


def _stat(fs, path: str, what: str) -> int:
    """A shard's ``semarc.stats`` figure, 0 where its footer cannot be read."""
    try:
        return int(json.loads(read_metadata(fs, path)[0]["semarc.stats"])[what])
    except Exception:  # an unreadable shard is reported when it is decoded
        return 0


def _shard_index(path: str) -> int | None:
    stem = path.rsplit("/", 1)[-1].removesuffix(".parquet").removeprefix("part-")
    return int(stem) if stem.isdigit() else None


def _decode_shards(ray, sfs, sink: DecodeSink, dst: str, pending: list[str], profiles: dict, keys: set | None,
                   opts: DecodeOptions, expect: dict | None = None) -> dict:
    """Decode the pending shards through the pools (``scheduler.run_shards``)
    into ``sink``. With a refiner, the image coders return arrays that go
    straight (object store) to the refiner pool with their captions, and the
    refined images are written: refinement is a second step, with a window of
    its own. Returns the pools' ``stage_report``."""
    from ..workers.pool import (codec_pools, gather, gather_sparse, refiner_pool, stage_report, submit_batches,
                                submit_sparse)

    ref_cfg = sink.refiner
    res = ray.cluster_resources()
    specs = size_pools(res.get("CPU", 1), res.get("GPU", 0), **opts.coding_pools(), captioner=ref_cfg is not None,
                       captioner_batch=opts.image_batch, captioner_pool=opts.refiner_pool,
                       captioner_gpus=opts.refiner_gpus, generator="refiner")
    todo = sum(_stat(sfs, p, "ok") for p in pending)
    progress = Progress(todo if keys is None else 0, enabled=opts.progress)
    cap_desc, img_desc = profiles["caption"], profiles["image"]
    t_pools = time.time()
    ref_pool = None
    if ref_cfg is not None:  # started first: the largest model loads while the coders load
        ref_pool = refiner_pool(specs["refiner"], ref_cfg, opts.threads_per_actor, opts.storage_options)
    cap_pool, img_pool = codec_pools(specs, opts.caption_model or cap_desc["model"], cap_desc["profile"],
                                     opts.codec or img_desc["codec"], opts.threads_per_actor, opts.storage_options)
    if ref_pool is not None:
        ensure_loaded(ray, ref_pool, f"the refiner {opts.refiner!r}")
    cb, ib = specs["caption"].batch_size, specs["image"].batch_size
    count = lambda got: progress.update(len(got), errors=sum(1 for g in got if "error" in g))  # noqa: E731

    def submit(path: str) -> tuple | None:
        try:
            table, meta = open_shard(sfs, path, columns=["key", "status", "width", "height", "caption", "image"],
                                     expect_rows=(expect or {}).get(path))
        except ShardError as e:
            sink.write_failed(path, e)
            progress.update(0, errors=1)
            return None
        shard_profiles = json.loads(meta["semarc.profiles"])
        rows = [r for r in table.to_pylist() if keys is None or r["key"] in keys]
        ok = [r for r in rows if r["status"] == "ok"]
        rels = [f"images/{safe_relpath(r['key'])}.{opts.format}" for r in ok]
        if ref_pool is None:
            img_calls = submit_batches(img_pool, "decode_to", [(rel, r["image"], (r["width"], r["height"]))
                                                               for rel, r in zip(rels, ok)], ib, shard_profiles, dst,
                                       opts.format)
        else:
            img_calls = submit_batches(img_pool, "decode_arrays", [r["image"] for r in ok], ib, shard_profiles)
        cap_calls = submit_sparse(cap_pool, "decode", [r["caption"] for r in ok], cb, shard_profiles)
        return [r["key"] for r in ok], rels, img_calls, cap_calls

    def finish(path: str, work: tuple) -> tuple | None:
        ok_keys, rels, img_calls, cap_calls = work
        caps = gather_sparse(cap_pool, cap_calls, len(ok_keys), fill={"caption": None})
        if ref_pool is None:
            sink.write(path, ok_keys, gather(img_pool, img_calls, len(ok_keys), count), caps)
            return None
        # each decoded batch goes from the image coder to a refiner without passing through here
        ref_calls = []
        for k, (b, call) in enumerate(img_calls):
            end = img_calls[k + 1][0] if k + 1 < len(img_calls) else len(ok_keys)
            texts = [c["caption"] if "caption" in c else c for c in caps[b:end]]
            ref_calls.append((b, ref_pool.submit("refine_to", call, texts, rels[b:end], ok_keys[b:end], dst,
                                                 opts.format)))
            img_pool.done(call)
        return ok_keys, ref_calls, caps

    def finish_refined(path: str, work: tuple) -> None:
        ok_keys, ref_calls, caps = work
        imgs = gather(ref_pool, ref_calls, len(ok_keys), count,
                      on_error=lambda e: {"error": f"refine: {type(e).__name__}: {str(e)[-300:]}"})
        sink.write(path, ok_keys, imgs, caps)

    run_shards(pending, window_for(ref_pool, cap_pool, img_pool), submit, finish, finish_refined)
    progress.close()
    return stage_report({"refinement": ref_pool, "caption decoding": cap_pool, "image decoding": img_pool},
                        time.time() - t_pools)
