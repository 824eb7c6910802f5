"""Encode and decode against a real S3 protocol endpoint: a moto server on
127.0.0.1 started by this test session (as s3fs's own suite does); credentials
and endpoint come from the environment, as a user's would."""

import json
import os
import socket
import time

import pytest

from conftest import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    for b in ("src", "dst"):
        s3.create_bucket(Bucket=b)
    yield {"env": env, "s3": s3}
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_encode_decode_s3_to_s3_and_resume(s3_env, tmp_path):
    s3, env = s3_env["s3"], s3_env["env"]
    r = run_cli("sample", tmp_path / "sample")
    assert r.returncode == 0
    rows = [json.loads(x) for x in (tmp_path / "sample" / "manifest.jsonl").read_text().splitlines()][:3]
    for x in rows:
        s3.put_object(Bucket="src", Key=f"set/{x['uri']}", Body=(tmp_path / "sample" / x["uri"]).read_bytes())
    rows.append({"uri": "images/missing.png", "key": "missing", "caption": "an object that is not there"})
    s3.put_object(Bucket="src", Key="set/manifest.jsonl", Body="".join(json.dumps(x) + "\n" for x in rows).encode())

    r = run_cli("encode", "s3://src/set/manifest.jsonl", "s3://dst/job", "--shard-size", "2", "--num-cpus", "2",
                "--no-progress", env=env)
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    assert env["AWS_SECRET_ACCESS_KEY"] not in r.stdout + r.stderr
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="dst", Prefix="job/")["Contents"]}
    assert {"job/part-00000.parquet", "job/part-00001.parquet", "job/_SUCCESS", "job/_manifest.json"} <= keys
    assert not any(".tmp" in k for k in keys)
    etags = {k: s3.head_object(Bucket="dst", Key=k)["ETag"] for k in keys if k.startswith("job/part-")}

    r = run_cli("inspect", "s3://dst/job", "--json", env=env)
    rep = json.loads(r.stdout)
    assert (rep["records"], rep["ok"], rep["errors"]) == (4, 3, 1)

    time.sleep(1)
    r = run_cli("encode", "s3://src/set/manifest.jsonl", "s3://dst/job", "--shard-size", "2", "--num-cpus", "2",
                "--no-progress", env=env)
    assert r.returncode == 3 and "2 already done" in r.stdout, r.stderr[-3000:]
    assert etags == {k: s3.head_object(Bucket="dst", Key=k)["ETag"] for k in etags}

    r = run_cli("decode", "s3://dst/job", "s3://dst/decoded", "--num-cpus", "2", "--no-progress", env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    body = s3.get_object(Bucket="dst", Key="decoded/captions.jsonl")["Body"].read().decode()
    got = [json.loads(x) for x in body.splitlines()]
    assert [(g["key"], g["caption"]) for g in got] == [(x["key"], x["caption"]) for x in rows[:3]]
    for x in rows[:3]:
        assert s3.head_object(Bucket="dst", Key=f"decoded/images/{x['key']}.png")["ContentLength"] > 1000


def test_exclusive_publish_is_a_conditional_put(s3_env):
    import s3fs

    from semarc.jobs.shards import publish

    fs = s3fs.S3FileSystem(endpoint_url=s3_env["env"]["AWS_ENDPOINT_URL"])
    publish(fs, "dst/cond/x.parquet", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        publish(fs, "dst/cond/x.parquet", b"second", exclusive=True)
    assert s3_env["s3"].get_object(Bucket="dst", Key="cond/x.parquet")["Body"].read() == b"first"
