"""Job plans: which input goes to which shard, fixed once, reused on rerun.

A plan streams: ``make`` consumes the input records one by one and writes
them in *plan parts* of about ``PART_RECORDS`` records (whole shards each,
Parquet: ``shard, key, uri, caption``), first to a local scratch folder.
Nothing is written to DST until the job starts work (``publish``): then the
parts go to ``DST/_plan/<job id>/plan-NNNNN.parquet`` and ``DST/_job.json``
(job id, configuration, record and shard counts, part names, profile table)
is written last. A job-level error found while listing (a duplicate key in
the last row of a manifest) leaves DST untouched.

The driver holds one or two parts at a time, never the whole plan: a job of
ten million records plans and runs in the memory of a job of ten thousand.
A rerun on the same DST reuses the plan, so shard names and contents never
change between attempts; a rerun with another configuration is refused. Two
drivers that plan the same job at once end with one plan (``publish_plan``
creates ``_job.json`` exclusively; the second driver follows the first's).
Plans written by semarc before plan parts (one ``DST/_plan.parquet``) still
load.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import InputRecord, JobError
from .shards import publish

PART_RECORDS = 16384
_SCHEMA = pa.schema([("shard", pa.int32()), ("key", pa.string()), ("uri", pa.string()), ("caption", pa.string())])


@dataclass
class Plan:
    job_id: str
    config: dict
    n_records: int
    shard_size: int
    shards_per_part: int
    parts: list[str]
    profiles: dict | None = None
    # where the parts are read from: (fsspec filesystem, folder)
    source: tuple = field(default=(None, ""), repr=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def n_shards(self) -> int:
        return -(-self.n_records // self.shard_size)

    def shard_len(self, i: int) -> int:
        return min(self.shard_size, self.n_records - i * self.shard_size)

    def records(self, i: int) -> list[InputRecord]:
        """The records of shard ``i``, in order (reads its plan part; the two
        most recently used parts stay in memory)."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} of {self.n_shards}")
        p = i // self.shards_per_part
        if p not in self._cache:
            fs, folder = self.source
            t = pq.read_table(pa.BufferReader(fs.cat_file(f"{folder}/{self.parts[p]}")))
            shards: dict[int, list[InputRecord]] = {}
            for s, k, u, c in zip(*(t[c].to_pylist() for c in ("shard", "key", "uri", "caption"))):
                shards.setdefault(s, []).append(InputRecord(k, u, c))
            self._cache[p] = shards
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        self._cache.move_to_end(p)
        recs = self._cache[p].get(i, [])
        if len(recs) != self.shard_len(i):
            raise JobError(f"plan part {self.parts[p]} holds {len(recs)} records of shard {i}, "
                           f"not {self.shard_len(i)}: the plan is damaged")
        return recs


def _part_bytes(rows: list[tuple[int, InputRecord]]) -> bytes:
    cols = list(zip(*((s, r.key, r.uri, r.caption) for s, r in rows)))
    t = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, _SCHEMA)], schema=_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def make(records: Iterable[InputRecord], shard_size: int, config: dict, scratch: str) -> Plan:
    """Stream ``records`` into plan parts under the local folder ``scratch``.
    A JobError raised by ``records`` (at any record) propagates; the caller
    owns ``scratch``."""
    if shard_size < 1:
        raise JobError("shard size must be >= 1")
    import fsspec

    spp = max(1, PART_RECORDS // shard_size)
    per_part = spp * shard_size
    parts: list[str] = []
    buf: list[tuple[int, InputRecord]] = []
    n = 0

    def flush():
        name = f"plan-{len(parts):05d}.parquet"  # not part-*: only shards are named so
        with open(os.path.join(scratch, name), "wb") as f:
            f.write(_part_bytes(buf))
        parts.append(name)
        buf.clear()

    for rec in records:
        buf.append((n // shard_size, rec))
        n += 1
        if len(buf) == per_part:
            flush()
    if buf:
        flush()
    if n == 0:
        raise JobError("no input records")
    return Plan(uuid.uuid4().hex, dict(config), n, shard_size, spp, parts,
                source=(fsspec.filesystem("file"), scratch))


def publish_plan(fs, root: str, plan: Plan) -> Plan:
    """Upload the plan parts (where they are still local scratch), then create
    ``_job.json``: from here on the job exists in DST and reruns reuse it.

    ``_job.json`` is created exclusively (local: a hard link; S3: a
    conditional PUT), so that two drivers of a job started together end with
    one plan: where another driver created it first, this one's parts are
    removed and the plan DST holds is returned, for this driver to follow
    (the caller checks that it is the same job). Returns the plan to follow."""
    fs.makedirs(root, exist_ok=True)
    folder = f"{root}/_plan/{plan.job_id}"
    src = plan.source[1]
    if src != folder:  # still in local scratch
        for name in plan.parts:
            with open(os.path.join(src, name), "rb") as f:
                publish(fs, f"{folder}/{name}", f.read())
    try:
        write_job(fs, root, plan, exclusive=True)
    except FileExistsError:
        fs.invalidate_cache(root)  # object-store listings are cached by fsspec
        other = load(fs, root)
        if other is None:
            raise JobError(f"{root}/_job.json exists and then does not: is another process deleting DST?") from None
        if other.job_id == plan.job_id:  # this job's own (a create retried after it succeeded, an older plan)
            write_job(fs, root, plan)
            return plan
        try:
            fs.rm(folder, recursive=True)
        except (FileNotFoundError, OSError):
            pass  # an unused folder of plan parts is harmless
        return other
    return plan


def write_job(fs, root: str, plan: Plan, exclusive: bool = False) -> None:
    doc = {"job_id": plan.job_id, "config": plan.config, "shards": plan.n_shards,
           "records": plan.n_records, "profiles": plan.profiles,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "plan": {"shard_size": plan.shard_size, "shards_per_part": plan.shards_per_part, "parts": plan.parts}}
    publish(fs, f"{root}/_job.json", json.dumps(doc, indent=1, sort_keys=True).encode(), exclusive=exclusive)


def load(fs, root: str) -> Plan | None:
    if not fs.exists(f"{root}/_job.json"):
        return None
    doc = json.loads(fs.cat_file(f"{root}/_job.json"))
    spec = doc.get("plan")
    if spec is not None:
        folder = f"{root}/_plan/{doc['job_id']}"
        return Plan(doc["job_id"], doc["config"], doc["records"], spec["shard_size"], spec["shards_per_part"],
                    spec["parts"], doc.get("profiles"), source=(fs, folder))
    # a plan from before plan parts: one _plan.parquet (same columns), read as a single part
    if not fs.exists(f"{root}/_plan.parquet"):
        raise JobError(f"{root}/_job.json exists but its plan is missing: the output folder is damaged")
    n, shards = doc["records"], doc["shards"]
    size = doc["config"].get("shard_size") or -(-n // shards)
    return Plan(doc["job_id"], doc["config"], n, size, shards, ["_plan.parquet"], doc.get("profiles"),
                source=(fs, root))


def scratch():
    """A local scratch folder for plan parts, removed on exit (a context manager)."""
    return tempfile.TemporaryDirectory(prefix="semarc-plan-")
