"""The main path end to end, through the `semarc` command line on a local Ray cluster."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from conftest import run_cli


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("job")
    r = run_cli("sample", base / "sample")
    assert r.returncode == 0, r.stderr
    manifest = Path(r.stdout.strip())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    jpg = (base / "sample" / "images" / "rocket.jpg").read_bytes()
    (base / "sample" / "images" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 4])
    (base / "sample" / "images" / "notes.png").write_text("not an image, despite the name\n")
    rows.insert(2, {"uri": "images/truncated.jpg", "key": "bad/truncated", "caption": "a broken file"})
    rows.append({"uri": "images/notes.png", "key": "bad/notes", "caption": "text pretending to be a PNG"})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = base / "out"
    r = run_cli("encode", manifest, out, "--shard-size", "3", "--num-cpus", "2", "--no-progress",
                "--report", base / "encode-report.json")
    return {"base": base, "manifest": manifest, "rows": rows, "out": out, "result": r}


def _table(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def test_encode_reports_error_rows_by_exit_status(job):
    r = job["result"]
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    out = job["out"]
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet",
                                                                "part-00002.parquet"]
    assert (out / "_SUCCESS").exists() and (out / "_manifest.json").exists()
    assert len(list(out.glob("part-*.stats.json"))) == 3
    t = _table(out)
    assert t.num_rows == len(job["rows"]) and len(set(t["key"].to_pylist())) == t.num_rows
    errs = {r["key"]: r["error"] for r in t.to_pylist() if r["status"] == "error"}
    assert set(errs) == {"bad/truncated", "bad/notes"}
    assert all(e.startswith("image:") and len(e) > 10 for e in errs.values())
    ok = [r for r in t.to_pylist() if r["status"] == "ok"]
    assert len(ok) == 5 and all(r["error"] is None and r["bytes_image"] > 0 for r in ok)


def test_the_report_says_what_each_pool_did(job):
    """``--report``: the final report as JSON, with each pool's busy time
    (workers.meter), also printed one line per pool after the summary."""
    rep = json.loads((job["base"] / "encode-report.json").read_text())
    assert (rep["records"], rep["ok"], rep["errors"], rep["shards"]) == (7, 5, 2, 3)
    assert rep["totals"]["bytes_total"] == rep["bytes_total"] > 0
    st = rep["stages"]
    assert set(st) == {"caption coding", "image coding"}
    # captions go to the caption coders only where a record has one; every input goes to the image coders
    assert st["caption coding"]["items"] == sum(1 for x in job["rows"] if x.get("caption"))
    assert st["image coding"]["items"] == len(job["rows"])
    for s in st.values():
        assert s["actors"] == 1 and s["busy_s"] > 0 and 0 < s["utilisation"] <= 1
        assert s["s_per_item"] == pytest.approx(s["busy_s"] / s["items"], rel=1e-3)
    lines = job["result"].stdout.splitlines()
    assert lines[0].startswith("semarc encode: 7 records")
    assert [x.split(":")[0].strip() for x in lines[1:3]] == ["caption coding", "image coding"]


def test_inspect_bpp_is_computed_from_the_stored_bytes(job):
    r = run_cli("inspect", job["out"], "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for k in ("records", "ok", "errors", "bytes_caption", "bytes_image", "bytes_total", "pixels", "bpp", "profiles"):
        assert k in rep
    t = _table(job["out"]).filter(pc.equal(pc.field("status"), "ok"))
    stored = sum(len(b or b"") for b in t["caption"].to_pylist()) + sum(len(b) for b in t["image"].to_pylist())
    pixels = sum(w * h for w, h in zip(t["width"].to_pylist(), t["height"].to_pylist()))
    assert (rep["records"], rep["ok"], rep["errors"]) == (7, 5, 2)
    assert rep["bytes_total"] == stored and rep["pixels"] == pixels
    assert rep["bpp"] == pytest.approx(8 * stored / pixels, rel=1e-12)
    assert {d["kind"] for d in rep["profiles"].values()} == {"caption", "image"}
    r = run_cli("inspect", job["out"], "--errors")
    assert {json.loads(x)["key"] for x in r.stdout.splitlines()} == {"bad/truncated", "bad/notes"}


def test_decode_restores_every_caption_exactly_and_every_size(job):
    dec = job["base"] / "dec"
    r = run_cli("decode", job["out"], dec, "--num-cpus", "2", "--no-progress", "--report", job["base"] / "dr.json")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rep = json.loads((job["base"] / "dr.json").read_text())
    assert (rep["decoded"], rep["errors"], rep["skipped_error_rows"]) == (5, 0, 2)
    # every ok record went once through each decoding pool
    assert {k: v["items"] for k, v in rep["stages"].items()} == {"caption decoding": 5, "image decoding": 5}
    got = [json.loads(x) for x in (dec / "captions.jsonl").read_text().splitlines()]
    want = [x for x in job["rows"] if not x["key"].startswith("bad/")]
    assert [(g["key"], g["caption"]) for g in got] == [(w["key"], w["caption"]) for w in want]
    assert "2 error rows skipped" in r.stdout
    for w in want:
        src = ImageOps.exif_transpose(Image.open(job["manifest"].parent / w["uri"]))
        out = Image.open(dec / "images" / f"{w['key']}.png")
        assert out.size == src.size and out.mode == "RGB"
        diff = np.abs(np.asarray(out, float) - np.asarray(src.convert("RGB"), float)).mean()
        assert diff < 40  # a reconstruction of this image, not of another


def test_rerun_redoes_no_finished_shard_and_duplicates_no_row(job):
    out = job["out"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*")}
    r = run_cli("encode", job["manifest"], out, "--shard-size", "3", "--num-cpus", "2", "--no-progress")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "3 already done" in r.stdout
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*")}
    assert before == after
    assert _table(out).num_rows == 7


def test_resume_redoes_only_the_missing_shard(job):
    out = job["out"]
    (out / "part-00001.parquet").unlink()
    keep = {p.name: p.stat().st_mtime_ns for p in out.glob("part-0000[02].parquet")}
    r = run_cli("encode", job["manifest"], out, "--shard-size", "3", "--num-cpus", "2", "--no-progress")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "2 already done" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-0000[02].parquet")} == keep
    t = _table(out)
    assert t.num_rows == 7 and len(set(t["key"].to_pylist())) == 7


def test_rerun_with_other_options_is_refused(job):
    r = run_cli("encode", job["manifest"], job["out"], "--shard-size", "4", "--num-cpus", "2", "--no-progress")
    assert r.returncode == 1 and "another configuration" in r.stderr


def test_corrupt_bitstream_fails_loudly_at_decode(job):
    src = job["out"] / "part-00000.parquet"
    t = pq.read_table(src)
    rows = t.to_pylist()
    victim = next(r for r in rows if r["status"] == "ok")
    img = bytearray(victim["image"])
    img[len(img) // 2] ^= 0x5A
    victim["image"] = bytes(img)
    bad = job["base"] / "bad_shards"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), bad / "part-00000.parquet")
    dec = job["base"] / "dec_bad"
    r = run_cli("decode", bad, dec, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    errs = [json.loads(x) for x in (dec / "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errs] == [victim["key"]] and "image" in errs[0]["error"]
    assert "ERROR" in r.stdout
    assert not (dec / "images" / f"{victim['key']}.png").exists()


def test_unreadable_shards_are_reported_and_the_others_decode(job):
    """A copy of the archive with one shard truncated, a directory named as a
    shard, and one shard whose rows disagree with the job's plan (a row
    dropped, footer stats rewritten to match): each is one error line naming
    the shard, the rest of the archive decodes, and the exit status says so."""
    import shutil

    from semarc.jobs import shards

    bad = job["base"] / "bad_archive"
    shutil.copytree(job["out"], bad)
    parts = sorted(bad.glob("part-*.parquet"))
    assert len(parts) >= 3
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[: len(data) // 2])
    (bad / "part-00009.parquet").mkdir()
    t = pq.read_table(parts[1])
    rows = t.to_pylist()[:-1]
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    meta["semarc.stats"] = json.dumps(shards.shard_stats(rows))
    parts[1].write_bytes(shards.to_bytes(rows, meta))
    dec = job["base"] / "dec_bad_archive"
    r = run_cli("decode", bad, dec, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 3, r.stdout + r.stderr[-2000:]
    errs = [json.loads(x) for x in (dec / "errors.jsonl").read_text().splitlines()]
    by_shard = {e["shard"]: e["error"] for e in errs if e.get("shard")}
    assert "not a Parquet file" in by_shard["part-00000"]
    assert "directory" in by_shard["part-00009"]
    assert "the job's plan" in by_shard["part-00001"]
    good = pq.read_table(job["out"] / parts[2].name)
    decoded = {json.loads(x)["key"] for x in (dec / "captions.jsonl").read_text().splitlines()}
    assert {k for k, s in zip(good.column("key").to_pylist(), good.column("status").to_pylist()) if s == "ok"} \
        <= decoded


def test_all_good_inputs_exit_zero_folder_without_captions(job, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (src / name).write_bytes((job["manifest"].parent / "images" / name).read_bytes())
    r = run_cli("encode", src, tmp_path / "out", "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    t = _table(tmp_path / "out")
    assert t["key"].to_pylist() == ["chelsea.png", "coffee.png"]
    assert t["caption_source"].to_pylist() == ["none", "none"] and t["caption"].null_count == 2


def test_job_level_manifest_error_does_no_work(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"uri": "a.png", "key": "k"}\n{"uri": "b.png", "key": "k"}\n')
    r = run_cli("encode", m, tmp_path / "out", "--no-progress")
    assert r.returncode == 1 and "duplicate key" in r.stderr
    assert not (tmp_path / "out").exists()


def test_joins_an_existing_cluster_by_address(job, tmp_path):
    """`--address` joins a Ray cluster started outside semarc and leaves it running."""
    import shutil
    import socket
    import subprocess
    import sys

    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    start = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180, env=env)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        r = run_cli("encode", job["manifest"], tmp_path / "out", "--address", f"127.0.0.1:{port}",
                    "--no-progress")
        assert r.returncode == 3, r.stdout + r.stderr[-3000:]
        assert len(_table(tmp_path / "out")) == 7
        status = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, env=env)
        assert status.returncode == 0  # semarc left the cluster running
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_decode_a_list_of_keys_as_webp(job):
    """Also: pools sized by hand beyond the cluster (4 actors, 2 CPUs) are scaled to fit (regression: an
    actor Ray could not place left the job waiting forever)."""
    dec = job["base"] / "dec_keys"
    r = run_cli("decode", job["out"], dec, "--keys", "chelsea,coffee", "--format", "webp", "--num-cpus", "2",
                "--no-progress", "--caption-pool", "2", "--image-pool", "2", "--image-batch", "1", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    got = [json.loads(x)["key"] for x in (dec / "captions.jsonl").read_text().splitlines()]
    assert got == ["chelsea", "coffee"]
    assert sorted(p.name for p in (dec / "images").iterdir()) == ["chelsea.webp", "coffee.webp"]
    assert Image.open(dec / "images" / "coffee.webp").format == "WEBP"


def test_caption_coders_get_whole_batches_of_captions():
    """A shard where one record in four has a caption sends the caption pool
    full batches of captions, not batches of records (regression: 16 captions
    per call of 64 ran the float64 coder at a quarter of its batch size)."""
    from semarc.workers.pool import gather_sparse, submit_sparse

    texts = [f"caption {i}" if i % 4 == 0 else None for i in range(256)]

    class Pool:  # records the batches handed to the actors; "results" are the items themselves
        def __init__(self):
            self.batches = []

        def submit(self, method, items, *extra):
            self.batches.append(items)
            return items

        def result(self, call):
            return call

    pool = Pool()
    idx, calls = submit_sparse(pool, "encode", texts, 64)
    present = [texts[i] for i in idx]
    assert idx == list(range(0, 256, 4)) and present == [t for t in texts if t is not None]
    assert [len(b) for b in pool.batches] == [64]
    back = gather_sparse(pool, (idx, calls), len(texts), fill="none")
    assert back == [t if t is not None else "none" for t in texts]
