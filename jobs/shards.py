"""Writer and reader of Parquet shards (record format v2, docs/format.md).

A shard is published atomically and at most once: on a local filesystem it
is written under a temporary name and hard-linked to its name (which fails if
the name exists); on object stores it is uploaded in one PUT (all-or-nothing)
that is conditional on the name not existing (S3 ``If-None-Match: *``, via
s3fs ``mode="create"``; there is no rename on object storage). If another
driver of the same job published the shard first, the existing shard is
checked (same job id, the planned rows) and kept. Shard names are fixed by the
job plan.
"""

from __future__ import annotations

import json
import struct
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "2"

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("caption_source", pa.string()),     # "manifest" | "none" | "generated" (by the job's captioner)
    ("caption_fallback", pa.bool_()),    # caption stored by the lossless fallback coder
    ("caption", pa.binary()),            # caption section (null: no caption)
    ("image", pa.binary()),              # image section (null on error rows)
    ("bytes_caption", pa.int32()),
    ("bytes_image", pa.int32()),
    ("bytes_total", pa.int32()),
    ("status", pa.string()),             # "ok" | "error"
    ("error", pa.string()),
])

BLOB_COLUMNS = ("caption", "image")


def shard_name(i: int) -> str:
    return f"part-{i:05d}"


def to_bytes(rows: list[dict], metadata: dict[str, str]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({k: v for k, v in metadata.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink,
        row_group_size=max(1, len(rows)),
        use_dictionary=[c for c in SCHEMA.names if c not in BLOB_COLUMNS],
        compression={c: ("NONE" if c in BLOB_COLUMNS else "ZSTD") for c in SCHEMA.names},
        write_page_checksum=True,
        write_statistics=["key", "status"],
    )
    return sink.getvalue().to_pybytes()


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _local_tmp(fs, path: str) -> str:
    """A temporary name beside ``path`` on a local filesystem (its folder made)."""
    parent, name = path.rsplit("/", 1)
    fs.makedirs(parent, exist_ok=True)
    return f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def publish(fs: fsspec.AbstractFileSystem, path: str, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing.
    With ``exclusive``, raise FileExistsError instead of replacing an existing
    ``path`` (local: hard link; object stores: a conditional PUT)."""
    if _is_local(fs):
        import os

        tmp = _local_tmp(fs, path)
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            if exclusive:
                os.link(tmp, path)
            else:
                fs.mv(tmp, path)
        finally:  # a failed write (a full disk) leaves no temporary file behind
            if os.path.lexists(tmp):
                os.unlink(tmp)
    elif exclusive:
        try:
            fs.pipe_file(path, data, mode="create")  # S3: PUT with If-None-Match: *
        except TypeError:  # a filesystem without conditional writes: a plain single PUT
            fs.pipe_file(path, data)
    else:
        fs.pipe_file(path, data)  # a single PUT: atomic on object stores


def publish_file(fs: fsspec.AbstractFileSystem, path: str, local_path: str) -> None:
    """``publish`` for content spooled in a local file (too large to hold in
    memory): local targets get a temporary name and a rename; object stores
    one upload (multipart for large files), visible only once complete."""
    if _is_local(fs):
        import os

        tmp = _local_tmp(fs, path)
        try:
            fs.put_file(local_path, tmp)
            fs.mv(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    else:
        fs.put_file(local_path, path)


def write_shard(fs, root: str, index: int, rows: list[dict], metadata: dict[str, str], stats: dict) -> bool:
    """Publish shard ``index`` (at most once) and its stats. Returns False
    where another driver of the same job had published it first (kept)."""
    name = shard_name(index)
    path = f"{root}/{name}.parquet"
    try:
        publish(fs, path, to_bytes(rows, metadata), exclusive=True)
    except FileExistsError:
        # published meanwhile (another driver of this job): keep it if it is this job's shard
        try:
            kv, n = read_metadata(fs, path)
        except Exception as e:
            raise FileExistsError(f"{path} exists but cannot be read as a shard ({type(e).__name__}: {e}); "
                                  f"it was not replaced: delete it to redo the shard") from None
        want = json.loads(metadata.get("semarc.job", "{}")).get("job_id")
        if json.loads(kv.get("semarc.job", "{}")).get("job_id") != want or n != len(rows):
            raise FileExistsError(f"{path} exists and is not this job's shard {index} ({n} rows); "
                                  f"it was not replaced") from None
        return False
    publish(fs, f"{root}/{name}.stats.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return True


# pyarrow is only ever handed bytes, never Python file objects: pyarrow reading
# through a Python file object while torch is loaded aborts the process at exit
# now and then ("terminate called without an active exception").

def _footer(fs, path: str) -> bytes:
    """The Parquet footer (file metadata) fetched with ranged reads, framed so
    that ``pq.read_metadata`` can parse it."""
    size = fs.size(path)
    tail = fs.cat_file(path, start=max(0, size - 65536), end=size)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise ValueError(f"{path} is not a Parquet file")
    n = struct.unpack("<I", tail[-8:-4])[0]
    if n + 8 > len(tail):
        tail = fs.cat_file(path, start=size - n - 8, end=size)
    return b"PAR1" + tail[-(n + 8):]


def read_metadata(fs, path: str) -> tuple[dict[str, str], int]:
    md = pq.read_metadata(pa.BufferReader(_footer(fs, path)))
    kv = {k.decode(): v.decode() for k, v in (md.metadata or {}).items()}
    return kv, md.num_rows


def read_shard(fs, path: str, columns: list[str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    table = pq.read_table(pa.BufferReader(fs.cat_file(path)), columns=columns)
    kv = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table, kv


class ShardError(ValueError):
    """A shard that is not what a semarc encoder publishes (truncated, corrupt,
    another schema or format, rows that disagree with its footer or plan)."""


_EXPECTED_FIELDS = {f.name: f.type for f in SCHEMA}


def open_shard(fs, path: str, columns: list[str] | None = None,
               expect_rows: int | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Read one shard as untrusted input and check what a decoder relies on:
    a Parquet file that parses, record format ``FORMAT``, a profile table and
    stats that parse, the columns' types, the row count of its stats (and of
    the job's plan, ``expect_rows``), ``status`` values, and unique keys.
    Raises ``ShardError`` naming the shard; storage errors (``OSError``) pass
    through, since a retry may succeed."""
    name = path.rsplit("/", 1)[-1]
    if fs.isdir(path):
        raise ShardError(f"{name}: a directory where a shard should be")
    data = fs.cat_file(path)
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ShardError(f"{name}: not a Parquet file ({len(data)} bytes; truncated or corrupt)")
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
        kv = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    except Exception as e:  # pyarrow's errors on corrupt files are of several types
        raise ShardError(f"{name}: cannot be read as Parquet: {type(e).__name__}: {str(e)[:200]}") from e
    if kv.get("semarc.format") != FORMAT:
        raise ShardError(f"{name}: record format {kv.get('semarc.format')!r}; this semarc reads format {FORMAT}")
    try:
        profiles = json.loads(kv["semarc.profiles"])
        stats = json.loads(kv["semarc.stats"])
        n_stats = int(stats["records"])
        if not all(isinstance(profiles.get(c), dict) for c in ("caption", "image")):
            raise ValueError("no caption and image coders")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ShardError(f"{name}: its footer's profile table or stats do not parse: {e}") from e
    for f in table.schema:
        if _EXPECTED_FIELDS.get(f.name) != f.type:
            raise ShardError(f"{name}: column {f.name!r} of type {f.type} is not in the record schema")
    missing = set(columns or SCHEMA.names) - set(table.schema.names)
    if missing:
        raise ShardError(f"{name}: columns {sorted(missing)} are missing")
    if table.num_rows != n_stats or (expect_rows is not None and table.num_rows != expect_rows):
        raise ShardError(f"{name}: {table.num_rows} rows, but its footer says {n_stats}"
                         + (f" and the job's plan {expect_rows}" if expect_rows is not None else ""))
    if "status" in table.schema.names and not set(table.column("status").to_pylist()) <= {"ok", "error"}:
        raise ShardError(f"{name}: a status other than 'ok' or 'error'")
    if "key" in table.schema.names:
        keys = table.column("key").to_pylist()
        if None in keys or len(set(keys)) != len(keys):
            raise ShardError(f"{name}: missing or repeated keys")
    return table, kv


def list_shards(fs, root: str) -> list[str]:
    fs.invalidate_cache(root)  # object-store listings are cached by fsspec
    try:
        files = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(p for p in files if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet"))


def shard_stats(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    s = {
        "records": len(rows), "ok": len(ok), "errors": len(rows) - len(ok),
        "caption_fallbacks": sum(1 for r in ok if r.get("caption_fallback")),
        "bytes_caption": sum(r["bytes_caption"] or 0 for r in ok),
        "bytes_image": sum(r["bytes_image"] or 0 for r in ok),
        "pixels": sum((r["width"] or 0) * (r["height"] or 0) for r in ok),
    }
    s["bytes_total"] = s["bytes_caption"] + s["bytes_image"]
    s["bpp"] = 8.0 * s["bytes_total"] / s["pixels"] if s["pixels"] else None
    return s
