"""``semarc.read``: an archive as a Ray Dataset of decoded records.

Two Ray Data stages, streamed:

* a datasource with one read task per group of shards that opens each shard
  as untrusted input (``jobs.shards.open_shard``: Parquet that parses, its
  format, profile table, stats, column types, row count against the job's
  plan, status values, unique keys) and yields one block of its records (the
  selected keys only); a shard that fails the checks becomes one error row
  naming it (``key`` null), and the other shards are read;
* ``map_batches`` with ``_Decoder``, a callable class whose actors each hold
  the caption and the image coder (the coding workers' own classes,
  ``workers/caption_worker.py`` and ``workers/image_worker.py``), so a record
  decodes exactly as in the decode job: the same profile checks, the same
  size check, the same error reasons.

Ray Data's streaming executor bounds what is in flight by the object store's
size, so an archive larger than the object store streams through (tests:
``test_read_streams_an_archive_larger_than_the_object_store``).
"""

from __future__ import annotations

import json

BATCH_SIZE = None        # records per decoding call; None: one shard per call, as the decode job's calls
OUT_ROWS = 16            # records per output block of decoded images
IMAGE_BATCH = 4          # images per image-decoding call, as the decode job's default
CAPTION_BATCH = 64       # the caption coder's batch, as the decode job's default

_COLUMNS = ["key", "status", "width", "height", "caption", "image", "error"]


def _read_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("status", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("caption", pa.binary()),
                      ("image", pa.binary()), ("error", pa.string()), ("profiles", pa.string())])


def _read_shards(paths: list[str], storage_options: dict, keys: list[str] | None, expect: dict) -> list:
    """The read task: one block per shard (its records, or one error row naming it)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.compute as pc

    from semarc.jobs.shards import ShardError, open_shard

    schema = _read_schema()
    fs = fsspec.core.url_to_fs(paths[0], **storage_options)[0] if paths else None
    for path in paths:
        name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        try:
            table, meta = open_shard(fs, path, columns=_COLUMNS, expect_rows=expect.get(path))
        except ShardError as e:
            yield pa.Table.from_pylist([{"key": None, "shard": name, "status": "error", "error": f"shard: {e}"}],
                                       schema=schema)
            continue
        if keys is not None:
            table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(keys, pa.string())))
        n = table.num_rows
        cols = {c: table.column(c).cast(schema.field(c).type) for c in _COLUMNS}
        cols["shard"] = pa.array([name] * n, pa.string())
        cols["profiles"] = pa.array([meta["semarc.profiles"]] * n, pa.string())
        yield pa.table([cols[f.name] for f in schema], schema=schema)


def _datasource(paths: list[str], storage_options: dict, keys: list[str] | None, expect: dict):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class ShardSource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            n = max(1, min(int(parallelism or 1), len(paths)))
            groups = [paths[i::n] for i in range(n)]
            tasks = []
            for g in groups:
                if not g:
                    continue
                meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=list(g), exec_stats=None)

                def read_fn(g=g):
                    return _read_shards(g, storage_options, keys, expect)

                tasks.append(ReadTask(read_fn, meta, schema=_read_schema()))
            return tasks

        def get_name(self) -> str:
            return "SemarcShards"

    return ShardSource()


class _Decoder:
    """A Ray Data actor: the caption and image coders of the archive, decoding
    a batch of records to (key, caption, image, width, height, error)."""

    def __init__(self, codec: str, caption_model: str, caption_profile: str, image_batch: int = IMAGE_BATCH,
                 caption_batch: int = CAPTION_BATCH, threads: int = 1) -> None:
        from semarc.workers.caption_worker import CaptionWorker
        from semarc.workers.image_worker import ImageWorker

        self.image = ImageWorker(codec, threads)
        self.caption = CaptionWorker(caption_model, caption_profile, threads, caption_batch)
        self.image_batch = image_batch

    def __call__(self, batch):
        """Decode a batch (by default one shard): its captions first, in calls
        of the caption coder's batch as the decode job makes them, then its
        images, yielding the records in blocks of ``OUT_ROWS``."""
        rows = batch.to_pylist()
        n = len(rows)
        errors = [r["error"] or ("error row" if r["status"] == "error" else None) for r in rows]
        captions: list = [None] * n
        by_profiles: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if r["status"] == "ok":
                by_profiles.setdefault(r["profiles"], []).append(i)
        parsed = {text: json.loads(text) for text in by_profiles}
        for text, idx in by_profiles.items():
            for i, c in zip(idx, self.caption.decode([rows[i]["caption"] for i in idx], parsed[text])):
                captions[i] = c
        for start in range(0, n, OUT_ROWS):
            part = range(start, min(n, start + OUT_ROWS))
            out = {"key": [], "caption": [], "image": [], "width": [], "height": [], "error": [], "shard": []}
            images: dict[int, object] = {}
            for text in by_profiles:
                idx = [i for i in part if rows[i]["status"] == "ok" and rows[i]["profiles"] == text]
                for b in range(0, len(idx), self.image_batch):
                    sub = idx[b:b + self.image_batch]
                    got = self.image.decode_arrays([rows[i]["image"] for i in sub], parsed[text],
                                                   [(rows[i]["width"], rows[i]["height"]) for i in sub])
                    images.update(zip(sub, got))
            for i in part:
                r, a, c = rows[i], images.get(i), captions[i]
                err = errors[i]
                if r["status"] == "ok":
                    errs = [x["error"] for x in (a, c) if isinstance(x, dict) and "error" in x]
                    err = "; ".join(dict.fromkeys(errs)) if errs else None
                ok = r["status"] == "ok" and err is None
                out["key"].append(r["key"])
                out["caption"].append(c["caption"] if ok else None)
                out["image"].append(a if ok else None)
                out["width"].append(int(a.shape[1]) if ok else r["width"])
                out["height"].append(int(a.shape[0]) if ok else r["height"])
                out["error"].append(err)
                out["shard"].append(r["shard"])
            yield _output_table(out)


def _output_table(out: dict):
    """The decoded batch as an Arrow table of fixed types (a column of None
    only would otherwise become Arrow's null type, and NaN in numpy batches);
    ``image`` a Ray tensor column (fixed shape, or variable where the sizes
    differ), an empty 0x0x3 array where a record has no decoded image."""
    import numpy as np
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray, ArrowVariableShapedTensorArray

    empty = np.zeros((0, 0, 3), np.uint8)
    arrays = [a if a is not None else empty for a in out["image"]]
    if len({a.shape for a in arrays}) == 1:
        images = ArrowTensorArray.from_numpy(np.stack(arrays))
    else:
        images = ArrowVariableShapedTensorArray.from_numpy(np.array(arrays + [None], dtype=object)[:-1])
    s = pa.string()
    return pa.table({"key": pa.array(out["key"], s), "caption": pa.array(out["caption"], s), "image": images,
                     "width": pa.array(out["width"], pa.int32()), "height": pa.array(out["height"], pa.int32()),
                     "error": pa.array(out["error"], s), "shard": pa.array(out["shard"], s)})


def read(url: str, *, keys=None, shards=None, concurrency=None, num_gpus: float = 0,
         batch_size: int | None = BATCH_SIZE,
         storage_options: dict | None = None, codec: str | None = None, caption_model: str | None = None):
    """An archive as a ``ray.data.Dataset`` of decoded records, read from any
    fsspec URL (a folder, ``s3://bucket/archive``).

    Each row: ``key``; ``caption`` (str, or None for a record without one);
    ``image`` (an HxWx3 uint8 numpy array, exactly the pixels ``semarc
    decode`` writes; an empty 0x0x3 array where ``error`` is set);
    ``width``, ``height``; ``shard`` (the shard's name); ``error``: None, or
    why the record has no decoded image and caption: the
    archive's own error row (the reason the encoder recorded), a record that
    cannot be decoded exactly (a corrupt section, a coder that is not the one
    recorded, a size mismatch; the decode job's reasons), or a shard that
    fails its checks (one row, ``key`` None, naming the shard). Rows come in
    no fixed order.

    Options:
        keys: only these keys (a list of str, or "a,b"; default: every
            record).
        shards: only these shards (names such as ``part-00003``, or indices).
        concurrency: decoding actors: an int, or ``(min, max)`` for an
            autoscaling pool (default: from 1 up to what the cluster fits).
        num_gpus: GPUs per decoding actor (default 0: CPU; one torch thread
            per actor).
        batch_size: records per decoding call (default None: a whole
            shard, whose captions are decoded in calls of 64 as in the
            decode job; the decoding LM's cost is per call more than per
            caption); the decoded records come in blocks of 16.
        storage_options: fsspec options for ``url`` (credentials are better
            left to the environment).
        codec, caption_model: override the coders named in the shards.

    Lazy, like every Ray Dataset: nothing is read until it is consumed
    (``iter_batches``, ``iter_rows``, ``take``, ``write_*``); it streams, so
    an archive larger than the object store (and than memory) can be read.
    Uses the Ray session this process holds (else Ray starts or joins one,
    as ``ray.data`` does). Raises ``semarc.JobError`` where there are no
    shards or the first readable footer is not a semarc shard of this format.

    Example::

        ds = semarc.read("s3://bucket/archive", concurrency=4)
        for batch in ds.iter_batches(batch_size=64):
            for key, image, error in zip(batch["key"], batch["image"], batch["error"]):
                ...
    """
    import fsspec
    import ray

    from semarc.jobs.decode import open_archive

    storage_options = dict(storage_options or {})
    if isinstance(keys, str):
        keys = [k for k in keys.split(",") if k]
    if isinstance(shards, (str, int)):
        shards = [s for s in str(shards).split(",") if s]
    fs, root = fsspec.core.url_to_fs(str(url), **storage_options)
    root = root.rstrip("/")
    paths, profiles, expect = open_archive(fs, root, str(url), [str(s) for s in shards] if shards else None, codec)
    # the read tasks get full URLs, so that they open the same filesystem
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    urls = [p if proto in ("file", "local") else f"{proto}://{p}" for p in paths]
    expect = {u: expect[p] for u, p in zip(urls, paths) if p in expect}
    # reading a shard is light next to decoding it: the read tasks take no CPU of their own, so that
    # decoding actors on every CPU cannot starve them (which would stall the pipeline)
    ds = ray.data.read_datasource(_datasource(urls, storage_options, list(keys) if keys is not None else None,
                                              expect), override_num_blocks=len(urls),
                                  num_cpus=0)
    if concurrency is None:
        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=None)
    elif isinstance(concurrency, int):
        compute = ray.data.ActorPoolStrategy(size=concurrency)
    else:
        compute = ray.data.ActorPoolStrategy(**dict(zip(("min_size", "max_size", "initial_size"), concurrency)))
    remote = {"num_cpus": 1} if not num_gpus else {"num_gpus": num_gpus}
    img_codec = codec or profiles["image"]["codec"]
    return ds.map_batches(_Decoder, fn_constructor_args=(img_codec, caption_model or profiles["caption"]["model"],
                                                         profiles["caption"]["profile"]),
                          batch_size=batch_size, batch_format="pyarrow", compute=compute, **remote)
