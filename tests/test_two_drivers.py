"""Two drivers of the same job on one DST at once: two `semarc encode`
processes with the same SRC, DST and options, started together, each with
its own local Ray cluster, on a local folder and on the moto S3 server. The
archive ends complete with ONE plan that both followed, each shard published
once (local: a hard link that fails where the name exists; S3: a PUT with
``If-None-Match: *``), no row twice, and both drivers say the job finished
(exit status 3: the inputs have error rows).

The end-to-end tests are marked ``slow`` (CI runs them with
``-m 'slow and not scale'``); the race for the plan itself is also tested
directly, in the default set."""

import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from crops import check_exactly_once, make_crops
from test_s3 import s3_env  # noqa: F401  (the moto server fixture)

N, SHARD = 24, 4


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("two-drivers"), N)


def _start(src, dst, env=None) -> subprocess.Popen:
    e = dict(os.environ, RAY_AUTH_MODE="disabled", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "semarc.cli", "encode", str(src), str(dst), "--shard-size",
                             str(SHARD), "--num-cpus", "1", "--codec", "semarc-fast", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def _run_both(src, dst, env=None) -> list[tuple[int, str, str]]:
    procs = [_start(src, dst, env), _start(src, dst, env)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=900)
        out.append((p.returncode, o, e))
    return out


def _check_drivers(results) -> None:
    for rc, out, err in results:
        assert rc == 3, out + err[-3000:]
        assert f"{N} records in {N // SHARD} shards" in out and "2 errors" in out, out
    # at most one of them lost the race for the plan, and followed the other's
    assert sum("following it" in err for _, _, err in results) <= 1


@pytest.mark.slow
def test_two_drivers_on_a_local_folder(crops, tmp_path):
    dst = tmp_path / "out"
    results = _run_both(crops["manifest"], dst)
    _check_drivers(results)
    job = json.loads((dst / "_job.json").read_text())
    assert [p.name for p in (dst / "_plan").iterdir()] == [job["job_id"]], "more than one plan in DST"
    shards = sorted(dst.glob("part-*.parquet"))
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(N // SHARD)]
    assert not [p.name for p in dst.rglob("*") if ".tmp" in p.name], "temporary files left"
    tables = [pq.read_table(p) for p in shards]
    for t in tables:
        assert json.loads(t.schema.metadata[b"semarc.job"])["job_id"] == job["job_id"]
    check_exactly_once(tables, crops)
    done = json.loads((dst / "_SUCCESS").read_text())
    assert (done["job_id"], done["records"], done["errors"]) == (job["job_id"], N, 2)
    # a third run finds the job done: nothing redone
    again = _start(crops["manifest"], dst)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 3 and f"({N // SHARD} already done)" in out, out + err[-2000:]


@pytest.mark.slow
def test_two_drivers_on_s3(s3_env, crops):  # noqa: F811
    s3, env = s3_env["s3"], s3_env["env"]
    results = _run_both(crops["manifest"], "s3://dst/two", env)
    _check_drivers(results)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="dst", Prefix="two/")["Contents"]}
    job = json.loads(s3.get_object(Bucket="dst", Key="two/_job.json")["Body"].read())
    assert {k.split("/")[2] for k in keys if k.startswith("two/_plan/")} == {job["job_id"]}, "more than one plan"
    shards = sorted(k for k in keys if k.startswith("two/part-") and k.endswith(".parquet"))
    assert shards == [f"two/part-{i:05d}.parquet" for i in range(N // SHARD)]
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket="dst", Key=k)["Body"].read())) for k in shards]
    for t in tables:
        assert json.loads(t.schema.metadata[b"semarc.job"])["job_id"] == job["job_id"]
    check_exactly_once(tables, crops)
    done = json.loads(s3.get_object(Bucket="dst", Key="two/_SUCCESS")["Body"].read())
    assert (done["job_id"], done["records"], done["errors"]) == (job["job_id"], N, 2)


def _two_plans(tmp_path):
    from semarc.jobs import plan as plan_mod
    from semarc.jobs.inputs import InputRecord

    recs = [InputRecord(f"k{i}", f"img/{i}.png", f"caption {i}") for i in range(10)]
    plans = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        p = plan_mod.make(iter(recs), 4, {"kind": "encode", "shard_size": 4}, str(tmp_path / name))
        p.profiles = {"caption": {"fingerprint": "c"}, "image": {"fingerprint": "i"}}
        plans.append(p)
    return plans


def _plan_race(fs, dst, plans):
    """Two drivers that planned the same job publish their plans one after
    the other (as two drivers started together do): the second gets the
    first's plan back, and its own parts are gone."""
    from semarc.jobs import plan as plan_mod

    first, second = plans
    assert plan_mod.publish_plan(fs, dst, first) is first
    got = plan_mod.publish_plan(fs, dst, second)
    assert got.job_id == first.job_id != second.job_id
    assert [r.key for r in got.records(2)] == ["k8", "k9"]
    assert plan_mod.load(fs, dst).job_id == first.job_id
    fs.invalidate_cache(dst)
    assert [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{dst}/_plan", detail=False)] == [first.job_id]
    # and a shard that the other driver published first is kept, and said so
    from semarc.jobs.shards import write_shard

    meta = {"semarc.job": json.dumps({"job_id": first.job_id})}
    rows = [{"key": "k0", "uri": "u", "width": 1, "height": 1, "caption_source": "none", "caption_fallback": False,
             "caption": None, "image": b"x", "bytes_caption": 0, "bytes_image": 1, "bytes_total": 1,
             "status": "ok", "error": None}]
    assert write_shard(fs, dst, 0, rows, meta, {}) is True
    assert write_shard(fs, dst, 0, rows, meta, {}) is False


def test_the_second_driver_to_publish_a_plan_follows_the_first_local(tmp_path):
    import fsspec

    _plan_race(fsspec.filesystem("file"), str(tmp_path / "dst"), _two_plans(tmp_path))


def test_the_second_driver_to_publish_a_plan_follows_the_first_s3(s3_env, tmp_path):  # noqa: F811
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_env["env"]["AWS_ENDPOINT_URL"])
    _plan_race(fs, "dst/plan-race", _two_plans(tmp_path))
