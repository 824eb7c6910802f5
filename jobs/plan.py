"""Job plans: which input goes to which shard, fixed once, reused on rerun.

DST/_job.json holds the job id, configuration and profile table;
DST/_plan.parquet one row per input (shard, key, uri, caption) in order.
A rerun on the same DST reuses both, so shard names and contents never
change between attempts; a rerun with another configuration is refused.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import InputRecord, JobError
from .shards import publish


@dataclass
class Plan:
    job_id: str
    config: dict
    shards: list[list[InputRecord]]
    profiles: dict | None = None

    @property
    def n_records(self) -> int:
        return sum(len(s) for s in self.shards)


def make(records: list[InputRecord], shard_size: int, config: dict) -> Plan:
    if shard_size < 1:
        raise JobError("shard size must be >= 1")
    shards = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    return Plan(uuid.uuid4().hex, dict(config), shards)


def save(fs, root: str, plan: Plan) -> None:
    fs.makedirs(root, exist_ok=True)
    rows = [{"shard": si, "key": r.key, "uri": r.uri, "caption": r.caption}
            for si, s in enumerate(plan.shards) for r in s]
    t = pa.Table.from_pylist(rows, schema=pa.schema([("shard", pa.int32()), ("key", pa.string()),
                                                     ("uri", pa.string()), ("caption", pa.string())]))
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="zstd")
    publish(fs, f"{root}/_plan.parquet", sink.getvalue().to_pybytes())
    write_job(fs, root, plan)


def write_job(fs, root: str, plan: Plan) -> None:
    doc = {"job_id": plan.job_id, "config": plan.config, "shards": len(plan.shards),
           "records": plan.n_records, "profiles": plan.profiles,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    publish(fs, f"{root}/_job.json", json.dumps(doc, indent=1, sort_keys=True).encode())


def load(fs, root: str) -> Plan | None:
    if not fs.exists(f"{root}/_job.json"):
        return None
    doc = json.loads(fs.cat_file(f"{root}/_job.json"))
    if not fs.exists(f"{root}/_plan.parquet"):
        raise JobError(f"{root}/_job.json exists but _plan.parquet is missing: the output folder is damaged")
    t = pq.read_table(pa.BufferReader(fs.cat_file(f"{root}/_plan.parquet")))
    shards: list[list[InputRecord]] = [[] for _ in range(doc["shards"])]
    for r in t.to_pylist():
        shards[r["shard"]].append(InputRecord(r["key"], r["uri"], r["caption"]))
    return Plan(doc["job_id"], doc["config"], shards, doc.get("profiles"))
