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
import io
import json
from dataclasses import dataclass

import fsspec

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")


class JobError(RuntimeError):
    """A job-level error: nothing is (or was) done."""


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


def _manifest_rows(f, path: str) -> tuple[list[str], object]:
    """(columns, row iterator) of an open manifest file. Parquet is read
    column-projected (``uri``/``caption``/``key``) and in batches: a LAION-style
    part file's other columns (or embeddings) cost no memory."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        cols = list(pf.schema_arrow.names)
        wanted = [c for c in MANIFEST_COLUMNS if c in cols]
        return cols, (r for batch in pf.iter_batches(batch_size=65536, columns=wanted) for r in batch.to_pylist())
    text = f.read().decode("utf-8")
    if path.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        return list(reader.fieldnames or []), reader
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return (sorted({k for r in lines for k in r}) if lines else ["uri"]), lines


def read_manifest(url: str, storage_options: dict | None = None) -> list[InputRecord]:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    base = fs.unstrip_protocol(path.rsplit("/", 1)[0]) if "/" in path else fs.unstrip_protocol(".")
    if not fs.exists(path):
        raise JobError(f"manifest {url} does not exist")
    out, seen = [], {}
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
                key = r.get("key") or uri
                if key in seen:
                    raise JobError(f"manifest {url}: duplicate key {key!r} (rows {seen[key]} and {n})")
                seen[key] = n
                out.append(InputRecord(str(key), _join(base, uri), cap))
    except JobError:
        raise
    except UnicodeDecodeError as e:
        raise JobError(f"manifest {url} is not valid UTF-8 (byte {e.start}): fix the file") from e
    except Exception as e:
        raise JobError(f"manifest {url} cannot be read: {type(e).__name__}: {e}") from e
    return out


def list_inputs(src: str, storage_options: dict | None = None) -> list[InputRecord]:
    so = storage_options or {}
    if src.endswith(MANIFEST_SUFFIXES) and not any(c in src for c in "*?["):
        return read_manifest(src, so)
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
    recs = []
    for p in sorted(files):
        rel = p[len(base):].lstrip("/") if base and p.startswith(base) else p
        if _hidden(rel):
            continue
        recs.append(InputRecord(rel, fs.unstrip_protocol(p)))
    if not recs:
        raise JobError(f"no input files under {src}")
    return recs
