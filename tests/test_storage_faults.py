"""Faults of the storage mid-job, against the moto S3 server behind a
fault-injecting proxy (``faults.py``, 127.0.0.1 only): transient answers
(503 SlowDown, 500) and connections dropped during PUTs and GETs are retried
and the jobs finish with every record once; a bucket that disappears and a
local DST that runs out of space fail the job clearly, and a rerun completes
it with nothing lost or duplicated."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from faults import FaultProxy, Rule
from test_s3 import s3_env  # noqa: F401  (the moto server fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    r = run_cli("sample", base / "sample")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (base / "sample" / "manifest.jsonl").read_text().splitlines()]
    return base, rows


@pytest.fixture
def proxy(s3_env):
    u = urlparse(s3_env["env"]["AWS_ENDPOINT_URL"])
    p = FaultProxy((u.hostname, u.port))
    url = p.start()
    yield p, {**s3_env["env"], "AWS_ENDPOINT_URL": url}
    p.stop()


def _upload(s3, sample, prefix: str) -> list[str]:
    base, rows = sample
    for x in rows:
        s3.put_object(Bucket="src", Key=f"{prefix}/{x['uri']}", Body=(base / "sample" / x["uri"]).read_bytes())
    s3.put_object(Bucket="src", Key=f"{prefix}/manifest.jsonl",
                  Body="".join(json.dumps(x) + "\n" for x in rows).encode())
    return [x["key"] for x in rows]


def _s3_rows(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        if o["Key"].rsplit("/", 1)[-1].startswith("part-") and o["Key"].endswith(".parquet"):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            keys += pq.read_table(pa.BufferReader(body)).column("key").to_pylist()
    return keys


def _encode(src, dst, env, *extra):
    return run_cli("encode", src, dst, "--shard-size", "2", "--num-cpus", "2", "--no-progress",
                   "--codec", "semarc-fast", *extra, env=env)


def test_transient_answers_and_dropped_connections_are_retried(s3_env, proxy, sample, tmp_path):
    s3 = s3_env["s3"]
    p, env = proxy
    keys = _upload(s3, sample, "t1")
    p.rules = [Rule("503", methods=("PUT",), every=3, times=5),
               Rule("500", methods=("GET",), every=5, times=4),
               Rule("drop", methods=("GET", "HEAD"), every=4, times=4),
               Rule("drop-forwarded", methods=("PUT",), every=4, times=3)]
    r = _encode("s3://src/t1/manifest.jsonl", "s3://dst/t1", env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    fired = p.fired()
    assert fired.get("503") and fired.get("500") and fired.get("drop") and fired.get("drop-forwarded"), fired
    got = _s3_rows(s3, "dst", "t1")
    assert sorted(got) == sorted(keys)  # every input once: nothing lost, nothing duplicated
    # the decode job through the same faults
    for rule in p.rules:
        rule.fired = rule.seen = 0
    r = run_cli("decode", "s3://dst/t1", tmp_path / "dec", "--num-cpus", "2", "--no-progress", env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    caps = [json.loads(x)["key"] for x in (tmp_path / "dec" / "captions.jsonl").read_text().splitlines()]
    assert sorted(caps) == sorted(keys)
    assert p.fired()


def test_a_fault_that_persists_fails_the_job_after_bounded_retries(s3_env, proxy, sample):
    """Every shard PUT answered 503: the retries are bounded, the job exits
    non-zero naming the storage's answer, and a rerun without the fault
    completes with every record once."""
    import time

    s3 = s3_env["s3"]
    p, env = proxy
    keys = _upload(s3, sample, "t3")
    p.rules = [Rule("503", methods=("PUT",), path=r"/dst/t3/part-")]
    t0 = time.time()
    r = _encode("s3://src/t3/manifest.jsonl", "s3://dst/t3", env)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert "SlowDown" in r.stdout + r.stderr or "reduce your request rate" in r.stdout + r.stderr, r.stderr[-2000:]
    tries = p.rules[0].fired
    assert 1 < tries <= 60, tries  # retried, within a bound
    assert time.time() - t0 < 600
    p.rules = []
    r = _encode("s3://src/t3/manifest.jsonl", "s3://dst/t3", env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert sorted(_s3_rows(s3, "dst", "t3")) == sorted(keys)


def test_a_bucket_that_disappears_fails_clearly_and_a_rerun_completes(s3_env, proxy, sample):
    s3 = s3_env["s3"]
    p, env = proxy
    keys = _upload(s3, sample, "t2")
    s3.create_bucket(Bucket="vanishing")

    def delete_bucket():
        for o in s3.list_objects_v2(Bucket="vanishing").get("Contents", []):
            s3.delete_object(Bucket="vanishing", Key=o["Key"])
        s3.delete_bucket(Bucket="vanishing")

    # the bucket goes away when the second shard is written
    p.rules = [Rule("pass", methods=("PUT",), path=r"/vanishing/job/part-00001", times=1, hook=delete_bucket)]
    r = _encode("s3://src/t2/manifest.jsonl", "s3://vanishing/job", env)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert "NoSuchBucket" in r.stdout + r.stderr or "does not exist" in r.stdout + r.stderr, r.stderr[-2000:]
    s3.create_bucket(Bucket="vanishing")
    p.rules = []
    r = _encode("s3://src/t2/manifest.jsonl", "s3://vanishing/job", env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert sorted(_s3_rows(s3, "vanishing", "job")) == sorted(keys)


def _mount_small(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_a_local_dst_that_runs_out_of_space_fails_clearly_and_a_rerun_completes(sample, tmp_path):
    base, rows = sample
    dst = tmp_path / "small"
    if not _mount_small(dst, "1m"):
        pytest.skip("cannot mount a size-limited tmpfs here (needs root and mount rights)")
    try:
        free = shutil.disk_usage(dst).free
        # leave room for the plan and a few shards, not all of them
        (dst / "filler").write_bytes(b"\0" * (free - 48 * 1024))
        r = run_cli("encode", base / "sample" / "manifest.jsonl", dst / "job", "--shard-size", "1", "--num-cpus", "2",
                    "--no-progress", "--codec", "semarc-fast")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out[-3000:]
        assert "No space left on device" in out, out[-3000:]
        published = sorted((dst / "job").glob("part-*.parquet"))
        for f in published:  # what was published is whole
            pq.read_table(f)
        (dst / "filler").unlink()
        r = run_cli("encode", base / "sample" / "manifest.jsonl", dst / "job", "--shard-size", "1", "--num-cpus", "2",
                    "--no-progress", "--codec", "semarc-fast")
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        got = pa.concat_tables([pq.read_table(f) for f in sorted((dst / "job").glob("part-*.parquet"))])
        assert sorted(got.column("key").to_pylist()) == sorted(x["key"] for x in rows)
        assert not [f for f in os.listdir(dst / "job") if f.startswith(".")]  # no temporary files left behind
    finally:
        subprocess.run(["umount", str(dst)], capture_output=True)
