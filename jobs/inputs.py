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


def read_manifest(url: str, storage_options: dict | None = None) -> list[InputRecord]:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    base = fs.unstrip_protocol(path.rsplit("/", 1)[0]) if "/" in path else fs.unstrip_protocol(".")
    if not fs.exists(path):
        raise JobError(f"manifest {url} does not exist")
    data = fs.cat_file(path)
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            import pyarrow as pa

            table = pq.read_table(pa.BufferReader(data))
            cols = table.column_names
            rows = table.to_pylist()
        else:
            text = data.decode("utf-8")
            if path.endswith(".csv"):
                reader = csv.DictReader(io.StringIO(text))
                cols = reader.fieldnames or []
                rows = list(reader)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
                cols = sorted({k for r in rows for k in r}) if rows else ["uri"]
    except UnicodeDecodeError as e:
        raise JobError(f"manifest {url} is not valid UTF-8 (byte {e.start}): fix the file") from e
    except Exception as e:
        raise JobError(f"manifest {url} cannot be read: {type(e).__name__}: {e}") from e
    if "uri" not in cols:
        raise JobError(f"manifest {url} has no 'uri' column (columns: {cols})")
    out, seen = [], {}
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
