"""Exactly once at scale, against a real S3 protocol endpoint (moto server on
127.0.0.1): 2,000 inputs (crops of the bundled photos, >= 1% corrupt) from S3
to S3. Run 1 kills an image worker process (kill -9, by pid) mid-job; run 2
kills the driver and its local Ray cluster mid-job and reruns. Every input
ends in exactly one row; published shards are never rewritten.

Marked ``scale`` (and ``slow``): deselected by the default test command, run
by CI as a second step (``pytest -m scale``)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from semarc.bench.pipeline import _tree
from test_s3 import s3_env  # noqa: F401  (the moto server fixture)

pytestmark = [pytest.mark.slow, pytest.mark.scale]

N = 2000
SHARD = 100
# the properties under test are the job's, not the codec's: the small model keeps the run short


def descendants(pid: int) -> list[int]:
    return _tree(pid)


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def dataset(s3_env, tmp_path_factory):  # noqa: F811
    from PIL import Image

    s3 = s3_env["s3"]
    d = tmp_path_factory.mktemp("scale")
    assert run_cli("sample", d / "sample").returncode == 0
    photos = [Image.open(p).convert("RGB") for p in sorted((d / "sample" / "images").iterdir())]
    rows, corrupt = [], set()
    for i in range(N):
        im = photos[i % len(photos)]
        x, y = (i * 37) % (im.width - 64), (i * 53) % (im.height - 48)
        buf = io.BytesIO()
        fmt = "PNG" if i % 2 else "JPEG"
        im.crop((x, y, x + 64, y + 48)).save(buf, fmt)
        data = buf.getvalue()
        if i % 97 == 5:  # >= 1% corrupt: truncated files and non-image bytes
            data = data[: len(data) // 3] if i % 2 else b"not an image at all"
            corrupt.add(f"k{i:05d}")
        key = f"set/img/{i:05d}.{fmt.lower()}"
        s3.put_object(Bucket="src", Key=key, Body=data)
        row = {"uri": f"img/{i:05d}.{fmt.lower()}", "key": f"k{i:05d}"}
        if i % 25 == 0:
            row["caption"] = f"crop {i} of photo {i % len(photos)}"
        rows.append(row)
    s3.put_object(Bucket="src", Key="set/manifest.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    assert len(corrupt) >= N // 100
    return {"keys": [r["key"] for r in rows], "corrupt": corrupt}


def _start(dst: str, env: dict) -> subprocess.Popen:
    e = dict(os.environ, RAY_AUTH_MODE="disabled", **env)
    return subprocess.Popen([sys.executable, "-m", "semarc.cli", "encode", "s3://src/set/manifest.jsonl", dst,
                             "--shard-size", str(SHARD), "--num-cpus", "2", "--image-batch", "8", "--no-progress",
                             "--codec", "semarc-fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, start_new_session=True)


def _parts(s3, prefix: str) -> dict[str, tuple[str, object]]:
    got = s3.list_objects_v2(Bucket="dst", Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in got if o["Key"].endswith(".parquet")
            and "/part-" in o["Key"]}


def _wait_parts(s3, prefix: str, n: int, proc, timeout: float = 900) -> None:
    t = time.time()
    while len(_parts(s3, prefix)) < n:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t < timeout, "no shard published in time"
        time.sleep(0.5)


def _check_exactly_once(s3, prefix: str, data) -> None:
    import pyarrow.parquet as pq

    keys, status = [], {}
    for k in sorted(_parts(s3, prefix)):
        t = pq.read_table(io.BytesIO(s3.get_object(Bucket="dst", Key=k)["Body"].read()), columns=["key", "status"])
        keys += t["key"].to_pylist()
        status.update(zip(t["key"].to_pylist(), t["status"].to_pylist()))
    assert len(keys) == N and sorted(keys) == sorted(data["keys"]), "lost or duplicated records"
    assert {k for k, s in status.items() if s == "error"} == data["corrupt"]


def test_worker_killed_mid_job_is_replaced_and_nothing_is_lost(s3_env, dataset):  # noqa: F811
    s3, env = s3_env["s3"], s3_env["env"]
    proc = _start("s3://dst/run1", env)
    _wait_parts(s3, "run1/", 1, proc)
    workers = [p for p in descendants(proc.pid) if cmdline(p).startswith("ray::ImageWorker")]
    assert workers, [cmdline(p)[:60] for p in descendants(proc.pid)]
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 3, out + err[-3000:]
    assert workers[0] not in descendants(proc.pid)
    _check_exactly_once(s3, "run1/", dataset)
    assert env["AWS_SECRET_ACCESS_KEY"] not in out + err


def test_driver_killed_mid_job_then_rerun(s3_env, dataset):  # noqa: F811
    s3, env = s3_env["s3"], s3_env["env"]
    proc = _start("s3://dst/run2", env)
    _wait_parts(s3, "run2/", 3, proc)
    tree = [proc.pid] + descendants(proc.pid)
    for p in tree:  # the driver and its local Ray cluster, as in a crash of the node
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)
    before = _parts(s3, "run2/")
    assert 3 <= len(before) < N // SHARD, "the kill did not land mid-job"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="dst", Prefix="run2/")["Contents"]}
    assert "run2/_SUCCESS" not in keys
    time.sleep(1.1)
    r = run_cli("encode", "s3://src/set/manifest.jsonl", "s3://dst/run2", "--shard-size", str(SHARD),
                "--num-cpus", "2", "--image-batch", "8", "--no-progress", "--codec", "semarc-fast", env=env,
                timeout=1800)
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    assert f"{len(before)} already done" in r.stdout
    after = _parts(s3, "run2/")
    assert {k: after[k] for k in before} == before, "a published shard was rewritten"
    _check_exactly_once(s3, "run2/", dataset)
    success = json.loads(s3.get_object(Bucket="dst", Key="run2/_SUCCESS")["Body"].read())
    assert success["records"] == N
