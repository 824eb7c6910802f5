"""Streamed job plans: parts of whole shards, read back one at a time; the
driver's memory does not grow with the number of inputs."""

import json
import subprocess
import sys

import fsspec
import pytest

from semarc.jobs import plan as plan_mod
from semarc.jobs.encode import EncodeOptions, run_encode
from semarc.jobs.inputs import InputRecord, JobError


def _recs(n):
    for i in range(n):
        yield InputRecord(f"k{i:06d}", f"s3://b/img/{i:06d}.jpg", None if i % 3 else f"caption {i}")


def test_plan_parts_hold_whole_shards_and_read_back_in_order(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    n, size = 40_123, 100
    plan = plan_mod.make(_recs(n), size, {"kind": "encode"}, str(scratch))
    spp = plan_mod.PART_RECORDS // size
    assert plan.n_shards == 402 and plan.shards_per_part == spp
    assert len(plan.parts) == -(-plan.n_shards // spp) and len(list(scratch.iterdir())) == len(plan.parts)
    assert plan.shard_len(0) == 100 and plan.shard_len(401) == 23
    want = list(_recs(n))
    for i in (0, spp - 1, spp, 2 * spp + 1, 401, 5):  # across part boundaries, and back
        assert plan.records(i) == want[i * size:(i + 1) * size]
    assert len(plan._cache) <= 2  # never more than two parts in memory
    with pytest.raises(IndexError):
        plan.records(402)

    fs, dst = fsspec.filesystem("file"), str(tmp_path / "dst")
    plan.profiles = {"caption": {"fingerprint": "x"}}
    plan_mod.publish_plan(fs, dst, plan)
    doc = json.loads((tmp_path / "dst" / "_job.json").read_text())
    assert doc["records"] == n and doc["shards"] == 402 and doc["plan"]["parts"] == plan.parts
    back = plan_mod.load(fs, dst)
    assert back.source[1].endswith(f"_plan/{plan.job_id}")
    assert [back.records(i) for i in (0, spp, 401)] == [plan.records(i) for i in (0, spp, 401)]
    assert back.profiles == plan.profiles and back.config == plan.config


def test_a_plan_from_before_plan_parts_still_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"shard": i // 2, "key": f"k{i}", "uri": f"u{i}", "caption": None} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "_plan.parquet")
    (tmp_path / "_job.json").write_text(json.dumps({"job_id": "j", "config": {}, "shards": 3, "records": 5,
                                                    "profiles": None}))
    p = plan_mod.load(fsspec.filesystem("file"), str(tmp_path))
    assert p.n_shards == 3 and [p.shard_len(i) for i in range(3)] == [2, 2, 1]
    assert p.records(2) == [InputRecord("k4", "u4", None)]
    # the shard size comes from the job's configuration: 9 records in shards of 4 are 4, 4, 1
    rows = [{"shard": i // 4, "key": f"k{i}", "uri": f"u{i}", "caption": None} for i in range(9)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "_plan.parquet")
    (tmp_path / "_job.json").write_text(json.dumps({"job_id": "j", "config": {"shard_size": 4}, "shards": 3,
                                                    "records": 9, "profiles": None}))
    p = plan_mod.load(fsspec.filesystem("file"), str(tmp_path))
    assert [p.shard_len(i) for i in range(3)] == [4, 4, 1] and p.records(1)[0] == InputRecord("k4", "u4", None)


def test_duplicate_key_in_the_last_row_stops_the_job_before_any_work(tmp_path):
    m = tmp_path / "m.jsonl"
    rows = [{"uri": f"{i}.png", "key": f"k{i}"} for i in range(3000)] + [{"uri": "x.png", "key": "k17"}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(JobError, match=r"duplicate key 'k17' \(rows 17 and 3000\)"):
        run_encode(str(m), str(tmp_path / "out"), EncodeOptions(progress=False))
    assert not (tmp_path / "out").exists()  # DST untouched: the plan parts were local scratch


_PLAN_MEMORY = r"""
import json, sys, tempfile
from semarc.jobs import plan as plan_mod
from semarc.jobs.inputs import iter_inputs
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
before = hwm()
with tempfile.TemporaryDirectory() as d:
    p = plan_mod.make(iter_inputs(sys.argv[1]), 256, {}, d)
    for i in range(0, p.n_shards, 7):
        p.records(i)
print(json.dumps({"records": p.n_records, "growth_kb": hwm() - before}))
"""


@pytest.mark.slow
def test_planning_memory_does_not_grow_with_the_number_of_inputs(tmp_path):
    """Plan 20,000 and 400,000 manifest rows (JSONL, streamed): the peak memory
    of planning grows by far less than the 400,000 records would take as
    Python objects (~150 MB)."""
    growth = {}
    for n in (20_000, 400_000):
        m = tmp_path / f"m{n}.jsonl"
        with open(m, "w") as f:
            for i in range(n):
                f.write(json.dumps({"uri": f"s3://bucket/laion/{i:08d}.jpg", "key": f"{i:08d}",
                                    "caption": f"a photo number {i} of something"}) + "\n")
        r = subprocess.run([sys.executable, "-c", _PLAN_MEMORY, str(m)], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["records"] == n
        growth[n] = out["growth_kb"] / 1024
    # 20x the inputs: some MB more (the 8-byte key hashes, Arrow's memory pool), measured
    # 21-33 MB on two installs; holding the 380,000 extra records would cost >= 150 MB
    assert growth[400_000] - growth[20_000] < 60, growth


def test_the_job_driver_does_not_import_torch():
    """The command line and the job drivers stay torch-free: importing torch
    costs a job about 1.3 s of start-up and the driver's memory (the models
    load in the workers). The train-codec options once pulled it in."""
    code = ("import sys\n"
            "from semarc import cli\n"
            "cli.build_parser()\n"
            "import semarc.jobs.encode, semarc.jobs.decode, semarc.jobs.inspect, semarc.workers.pool\n"
            "import semarc.cluster.ray_cluster, semarc.bench.pipeline\n"
            "print(sorted(m for m in ('torch', 'transformers', 'compressai') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
