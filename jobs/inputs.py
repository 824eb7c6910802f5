"""Reader: what a job's SRC names, as a list of input records.

SRC is a folder or glob of images on any fsspec URL, or a manifest file
(``.parquet``, ``.csv``, ``.jsonl``) with a ``uri`` column, an optional
``caption`` and an optional ``key`` column. Relative uris resolve against the
manifest's folder. A record's key: the ``key`` column, else the path relative
to the SRC folder (or the glob's fixed prefix), else the uri. In a folder,
every file is an input except names starting with ``.`` or ``_``.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from ..workers.errors import JobError

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")


@dataclass(frozen=True)
class InputRecord:
    key: str
    uri: str
    caption: str | None = None


def _is_url(s: str) -> bool:
    return "://" in s


def _join(base_url: str, rel: str) -> str:
    if _is_url(rel) or rel.startswith("/"):
        return rel
    return base_url.rstrip("/") + "/" + rel


def _hidden(rel: str) -> bool:
    return any(p.startswith((".", "_")) for p in rel.split("/") if p)


MANIFEST_COLUMNS = ("uri", "caption", "key")


def _text_lines(f):
    """The lines of a binary file as text, one at a time; a UTF-8 error names
    its byte offset in the file."""
    off = 0
    for raw in f:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UnicodeDecodeError(e.encoding, e.object, off + e.start, off + e.end, e.reason) from None
        off += len(raw)


def _manifest_rows(f, path: str) -> tuple[list[str], object]:
    """(columns, row iterator) of an open manifest file, streamed: Parquet is
    read column-projected (``uri``/``caption``/``key``) and in batches, so a
    LAION-style part file's other columns (or embeddings) cost no memory; CSV
    and JSONL line by line (JSONL: the columns are the first row's keys)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        cols = list(pf.schema_arrow.names)
        wanted = [c for c in MANIFEST_COLUMNS if c in cols]
        return cols, (r for batch in pf.iter_batches(batch_size=65536, columns=wanted) for r in batch.to_pylist())
    lines = _text_lines(f)
    if path.endswith(".csv"):
        reader = csv.DictReader(lines)
        return list(reader.fieldnames or []), reader
    rows = (json.loads(line) for line in lines if line.strip())
    first = next(rows, None)
    if first is None:
        return ["uri"], iter(())
    return sorted(first), itertools.chain([first], rows)


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def _duplicate_hashes(hashes: array) -> set[int]:
    """The 64-bit key hashes that occur more than once (8 bytes per record,
    sorted with numpy: a set of ten million Python strings would take GBs)."""
    import numpy as np

    if len(hashes) < 2:
        return set()
    a = np.sort(np.frombuffer(hashes, dtype=np.int64))
    return set(a[1:][a[1:] == a[:-1]].tolist())


def iter_manifest(url: str, storage_options: dict | None = None) -> Iterator[InputRecord]:
    """The records of a manifest, streamed (Parquet in column-projected
    batches). Keys must be unique: that is checked with a 64-bit hash per
    record as they stream, and after the last record a repeated hash is
    confirmed exactly by a second pass, which raises JobError naming the key
    and both rows. A consumer must take every record before acting on them."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    base = fs.unstrip_protocol(path.rsplit("/", 1)[0]) if "/" in path else fs.unstrip_protocol(".")
    if not fs.exists(path):
        raise JobError(f"manifest {url} does not exist")

    def records():
        try:
            with fs.open(path, "rb") as f:
                cols, rows = _manifest_rows(f, path)
                if "uri" not in cols:
                    raise JobError(f"manifest {url} has no 'uri' column (columns: {cols})")
                for n, r in enumerate(rows):
                    uri = r.get("uri")
                    if not isinstance(uri, str) or not uri:
                        raise JobError(f"manifest {url} row {n}: empty or non-text uri")
                    cap = r.get("caption")
                    if cap is not None and not isinstance(cap, str):
                        cap = str(cap)
                    yield n, InputRecord(str(r.get("key") or uri), _join(base, uri), cap)
        except JobError:
            raise
        except UnicodeDecodeError as e:
            raise JobError(f"manifest {url} is not valid UTF-8 (byte {e.start}): fix the file") from e
        except Exception as e:
            raise JobError(f"manifest {url} cannot be read: {type(e).__name__}: {e}") from e

    hashes = array("q")
    for _, rec in records():
        hashes.append(_key_hash(rec.key))
        yield rec
    dup = _duplicate_hashes(hashes)
    del hashes
    if dup:  # confirm exactly (a repeated 64-bit hash of distinct keys is possible, if unlikely)
        seen: dict[str, int] = {}
        for n, rec in records():
            if _key_hash(rec.key) in dup:
                if rec.key in seen:
                    raise JobError(f"manifest {url}: duplicate key {rec.key!r} (rows {seen[rec.key]} and {n})")
                seen[rec.key] = n


def iter_inputs(src: str, storage_options: dict | None = None) -> Iterator[InputRecord]:
    """The input records that SRC names, streamed. A manifest is read in
    batches; a folder or glob is listed first (object stores list names only,
    about 100 bytes each), then streamed in sorted order. Job-level errors
    (JobError) can come at any record, the last included: act on the records
    only after the iterator is exhausted (``jobs.plan.make`` does)."""
    so = storage_options or {}
    if src.endswith(MANIFEST_SUFFIXES) and not any(c in src for c in "*?["):
        yield from iter_manifest(src, so)
        return
    fs, path = fsspec.core.url_to_fs(src, **so)
    if any(c in path for c in "*?["):
        prefix = path[:min(path.find(c) for c in "*?[" if c in path)]
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        files = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        base = path.rstrip("/")
        files = fs.find(path)
    elif fs.isfile(path):
        base = path.rsplit("/", 1)[0] if "/" in path else ""
        files = [path]
    else:
        raise JobError(f"input {src} does not exist")
    files.sort()
    n = 0
    for p in files:  # paths are unique: so are their keys
        rel = p[len(base):].lstrip("/") if base and p.startswith(base) else p
        if _hidden(rel):
            continue
        n += 1
        yield InputRecord(rel, fs.unstrip_protocol(p))
    if not n:
        raise JobError(f"no input files under {src}")


def list_inputs(src: str, storage_options: dict | None = None) -> list[InputRecord]:
    return list(iter_inputs(src, storage_options))
