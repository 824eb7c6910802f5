"""Shard publishing: atomic, at most once (local hard link; S3 conditional PUT
on the moto server)."""

import json

import fsspec
import pytest

from semarc.jobs.shards import publish, read_metadata, write_shard

ROW = {"key": "k", "uri": "u", "width": 1, "height": 1, "caption_source": "none", "caption_fallback": False,
       "caption": None, "image": b"\x22abc", "bytes_caption": 0, "bytes_image": 4, "bytes_total": 4,
       "status": "ok", "error": None}


def _meta(job_id):
    return {"semarc.format": "2", "semarc.job": json.dumps({"job_id": job_id, "shard": 0})}


def test_local_exclusive_publish_never_replaces(tmp_path):
    fs = fsspec.filesystem("file")
    p = str(tmp_path / "a" / "x.bin")
    publish(fs, p, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        publish(fs, p, b"second", exclusive=True)
    assert open(p, "rb").read() == b"first"
    assert [f.name for f in (tmp_path / "a").iterdir()] == ["x.bin"]  # no temporary left behind
    publish(fs, p, b"third")  # non-exclusive replaces (stats, manifest)
    assert open(p, "rb").read() == b"third"


def test_a_shard_published_meanwhile_by_the_same_job_is_kept(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path)
    write_shard(fs, root, 0, [ROW], _meta("job-1"), {"records": 1})
    before = (tmp_path / "part-00000.parquet").read_bytes()
    mtime = (tmp_path / "part-00000.parquet").stat().st_mtime_ns
    write_shard(fs, root, 0, [dict(ROW, key="other")], _meta("job-1"), {"records": 1})  # a second driver
    assert (tmp_path / "part-00000.parquet").read_bytes() == before
    assert (tmp_path / "part-00000.parquet").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="not this job's shard"):
        write_shard(fs, root, 0, [ROW], _meta("job-2"), {"records": 1})
    (tmp_path / "part-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(FileExistsError, match="cannot be read"):
        write_shard(fs, root, 1, [ROW], _meta("job-1"), {"records": 1})
    assert read_metadata(fs, str(tmp_path / "part-00000.parquet"))[1] == 1
