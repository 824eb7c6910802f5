import json
from pathlib import Path

import pytest

from semarc.jobs.inputs import JobError, list_inputs
from semarc.jobs.keys import safe_relpath


@pytest.mark.parametrize("key,expect", [
    ("a/b/c.jpg", "a/b/c.jpg"),
    ("/etc/passwd", "etc/passwd"),
    ("../../x.png", "%2E%2E/%2E%2E/x.png"),
    ("a/./b", "a/b"),
    ("C:\\win\\x.png", "C%3A/win/x.png"),
    ("sp ace/ü.png", "sp ace/%C3%BC.png"),
    ("", "%00empty"),
])
def test_safe_relpath(key, expect):
    out = safe_relpath(key)
    assert out == expect
    assert not out.startswith("/") and ".." not in out.split("/")


def test_safe_relpath_never_collides():
    keys = ["a b", "a_b", "a%20b", "a/b", "a%2Fb", "..", "%2E%2E"]
    assert len({safe_relpath(k) for k in keys}) == len(keys)


def _touch(p: Path, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_folder_keys_are_relative_paths_and_hidden_files_skipped(tmp_path):
    for rel in ["b.png", "a/c.jpg", ".hidden.png", "_meta/x.png", "a/.d.png"]:
        _touch(tmp_path / "in" / rel)
    recs = list_inputs(str(tmp_path / "in"))
    assert [r.key for r in recs] == ["a/c.jpg", "b.png"]
    assert recs[0].uri.endswith("in/a/c.jpg") and recs[0].caption is None


def test_glob_keys_relative_to_fixed_prefix(tmp_path):
    for rel in ["x/1.png", "x/2.png", "x/3.jpg"]:
        _touch(tmp_path / rel)
    recs = list_inputs(str(tmp_path / "x" / "*.png"))
    assert [r.key for r in recs] == ["1.png", "2.png"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_manifest_relative_uris_keys_captions(tmp_path, fmt):
    rows = [{"uri": "img/a.png", "caption": "first", "key": "k1"}, {"uri": "/abs/b.png", "caption": "", "key": "k2"},
            {"uri": "s3://bucket/c.png", "caption": "third", "key": "k3"}]
    p = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        p.write_text("uri,caption,key\n" + "".join(f"{r['uri']},{r['caption']},{r['key']}\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), p)
    recs = list_inputs(str(p))
    assert [r.key for r in recs] == ["k1", "k2", "k3"]
    assert recs[0].uri.endswith(f"{tmp_path.name}/img/a.png")
    assert recs[1].uri == "/abs/b.png" and recs[2].uri == "s3://bucket/c.png"
    assert recs[0].caption == "first" and recs[1].caption == ""


def test_manifest_without_key_uses_uri(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"uri": "a.png"}\n{"uri": "b.png"}\n')
    assert [r.key for r in list_inputs(str(p))] == ["a.png", "b.png"]


def test_manifest_duplicate_keys_is_a_job_error(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"uri": "a.png", "key": "k"}\n{"uri": "b.png", "key": "k"}\n')
    with pytest.raises(JobError, match="duplicate key"):
        list_inputs(str(p))


def test_manifest_without_uri_column_is_a_job_error(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("path,caption\na.png,x\n")
    with pytest.raises(JobError, match="no 'uri' column"):
        list_inputs(str(p))


def test_manifest_invalid_utf8_is_a_job_error(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"uri": "a.png", "caption": "\xff\xfe"}\n')
    with pytest.raises(JobError, match="UTF-8"):
        list_inputs(str(p))


def test_missing_src_is_a_job_error(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        list_inputs(str(tmp_path / "nope"))


def test_laion_style_parquet_reads_only_the_manifest_columns(tmp_path):
    """A LAION-style part file (uri + caption + many other columns, here a
    512-float embedding per row) is read column-projected and in batches: the
    reader's peak memory stays far below that of loading the whole table."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = 40_000, 512
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.random.default_rng(0).random(n * dim, dtype=np.float32)), dim)
    table = pa.table({"uri": [f"s3://laion/part-0/{i:06d}.jpg" for i in range(n)],
                      "caption": [f"caption number {i}" for i in range(n)],
                      "similarity": np.linspace(0, 1, n), "width": np.full(n, 256), "embedding": emb})
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=8192, compression="none")
    heavy_mb = n * dim * 4 / 2**20  # 78 MB of embeddings
    # VmHWM (peak RSS of this address space) starts afresh at exec; ru_maxrss would
    # carry over the forking parent's peak (a large pytest process)
    code = ("import sys\nfrom semarc.jobs.inputs import list_inputs\nimport pyarrow.parquet as pq\n"
            "def hwm():\n    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "before = hwm()\n"
            "if sys.argv[2] == 'semarc':\n    recs = list_inputs(sys.argv[1]); assert len(recs) == 40000, len(recs)\n"
            "    assert recs[7].uri == 's3://laion/part-0/000007.jpg' and recs[7].caption == 'caption number 7'\n"
            "else:\n    pq.read_table(sys.argv[1]).to_pylist()\n"
            "print((hwm() - before) / 1024)\n")
    grow = {}
    for how in ("semarc", "full"):
        r = subprocess.run([sys.executable, "-c", code, str(path), how], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        grow[how] = float(r.stdout.strip().splitlines()[-1])
    assert grow["full"] > heavy_mb  # the comparison is meaningful: loading everything costs the embeddings
    assert grow["semarc"] < grow["full"] - 0.8 * heavy_mb, grow
