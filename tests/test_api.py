"""The Python API: ``semarc.encode`` / ``semarc.decode`` (the command line's
jobs, one options object each, the flags derived from its fields) and
``semarc.read`` (an archive as a Ray Dataset of decoded records), on a local
archive, a moto S3 archive, damaged archives, and an archive larger than the
object store."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_cli
from test_s3 import s3_env  # noqa: F401 - the moto S3 server fixture


# -- the options: one object per job, the flags derived from it ------------------------------------------------

def test_import_semarc_is_light_and_help_documents_every_option():
    code = ("import sys, pydoc, semarc\n"
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'fsspec', 'transformers') if m in sys.modules))\n"
            "print(pydoc.render_doc(semarc.encode, renderer=pydoc.plaintext))\n"
            "print('=====')\n"
            "print(pydoc.render_doc(semarc.decode, renderer=pydoc.plaintext))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, enc, dec = out.split("\n", 1)[0], *out.split("\n", 1)[1].split("=====")
    assert loaded == "[]"
    from semarc.jobs.options import DecodeOptions, EncodeOptions

    for cls, text in ((EncodeOptions, enc), (DecodeOptions, dec)):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f.name
            assert f"{f.name}: " in text and f.metadata["help"][:40] in " ".join(text.split()), f.name
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert f"{f.name}: {f.type} = {default!r}" in text, f.name


@pytest.mark.parametrize("fn", ["encode", "decode"])
def test_unknown_options_are_a_type_error_naming_the_valid_ones(fn):
    import semarc

    with pytest.raises(TypeError) as e:
        getattr(semarc, fn)("SRC", "DST", shard_sise=3, codec="semarc-fast")
    msg = str(e.value)
    assert f"semarc.{fn}()" in msg and "'shard_sise'" in msg and "valid options:" in msg
    assert "codec" in msg and "storage_options" in msg and ("shard_size" in msg) == (fn == "encode")


@pytest.mark.parametrize("cmd", ["encode", "decode"])
def test_every_option_is_a_flag_and_every_flag_an_option(cmd):
    """The command line's flags are built from the options' fields: each field
    has its flag (``--no-X`` for a field that defaults to True), the flags
    parse to the same defaults as the dataclass, and the only flags that are
    not options are the command line's own (--report, -h)."""
    from semarc.cli import build_parser, options_from_args
    from semarc.jobs.options import DecodeOptions, EncodeOptions

    cls = EncodeOptions if cmd == "encode" else DecodeOptions
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[cmd]
    flags = {s for a in sub._actions for s in a.option_strings}
    want = {("--no-" if f.default is True else "--") + f.name.replace("_", "-") for f in dataclasses.fields(cls)}
    assert flags - want == {"-h", "--help", "--report"}
    assert want <= flags
    assert options_from_args(cls, parser.parse_args([cmd, "S", "D"])) == cls()


def test_flags_reach_the_options():
    from semarc.cli import build_parser, decode_options, encode_options
    from semarc.jobs.options import DecodeOptions, EncodeOptions

    p = build_parser()
    e = encode_options(p.parse_args(["encode", "S", "D", "--codec", "semarc-fast", "--shard-size", "7",
                                     "--no-progress", "--storage-options", '{"anon": true}', "--one-lmm",
                                     "--captioner", "m", "--captioner-gpus", "0.5", "--threads-per-actor", "2"]))
    assert e == EncodeOptions(codec="semarc-fast", shard_size=7, progress=False, storage_options={"anon": True},
                              one_lmm=True, captioner="m", captioner_gpus=0.5, threads_per_actor=2)
    d = decode_options(p.parse_args(["decode", "S", "D", "--keys", "a,b", "--shards", "0,part-00002",
                                     "--format", "webp", "--refine-steps", "3"]))
    assert d == DecodeOptions(keys=["a", "b"], shards=["0", "part-00002"], format="webp", refine_steps=3)
    with pytest.raises(SystemExit):
        p.parse_args(["decode", "S", "D", "--format", "gif"])


# -- semarc.read -------------------------------------------------------------------------------------------

CROP = 96


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A small archive made with ``semarc.encode`` (crops of the sample
    photos, short captions, one record without a caption, two bad inputs),
    and its ``semarc decode`` output: the reference pixels and captions."""
    base = tmp_path_factory.mktemp("api")
    r = run_cli("sample", base / "sample")
    assert r.returncode == 0, r.stderr
    rows = []
    (base / "img").mkdir()
    for i, name in enumerate(["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle.png"]):
        im = Image.open(base / "sample" / "images" / name).convert("RGB")
        im.crop((16, 16, 16 + CROP, 16 + CROP - (16 if i >= 3 else 0))).save(base / "img" / f"{i}.png")
        rows.append({"uri": f"img/{i}.png", "key": f"k/{i}", "caption": f"photo {i}" if i != 3 else None})
    (base / "img" / "bad.png").write_text("not an image\n")
    rows.insert(2, {"uri": "img/bad.png", "key": "bad/text", "caption": "a text file"})
    rows.append({"uri": "img/missing.png", "key": "bad/missing", "caption": "absent"})
    (base / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    code = ("import sys, json, semarc\n"
            "r = semarc.encode(sys.argv[1], sys.argv[2], codec='semarc-fast', shard_size=3, num_cpus=2, "
            "progress=False)\n"
            "d = semarc.decode(sys.argv[2], sys.argv[3], num_cpus=2, progress=False)\n"
            "print(json.dumps([r.records, r.ok, r.errors, d.decoded, d.errors]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(base / "m.jsonl"), str(base / "arch"), str(base / "dec")],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [7, 5, 2, 5, 0]
    captions = {json.loads(x)["key"]: json.loads(x)["caption"]
                for x in (base / "dec" / "captions.jsonl").read_text().splitlines()}
    return {"base": base, "arch": base / "arch", "dec": base / "dec", "rows": rows, "captions": captions}


@pytest.fixture
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def _rows(ds) -> dict:
    """Every row of the dataset, by key (shard errors by shard name)."""
    out = {}
    for b in ds.iter_batches(batch_size=4, batch_format="numpy"):
        for j in range(len(b["key"])):
            row = {c: b[c][j] for c in b}
            k = row["key"] if row["key"] is not None else f"shard:{row['shard']}"
            assert k not in out, k
            out[k] = row
    return out


def _check_decoded(got: dict, archive, keys) -> None:
    for k in keys:
        r = got[k]
        assert r["error"] is None, (k, r["error"])
        assert r["caption"] == archive["captions"][k]
        ref = np.asarray(Image.open(archive["dec"] / "images" / f"{k}.png"))
        assert r["image"].dtype == np.uint8 and r["image"].shape == ref.shape
        assert (r["image"].shape[1], r["image"].shape[0]) == (r["width"], r["height"])
        assert np.array_equal(r["image"], ref), k


@pytest.mark.slow
def test_read_yields_every_record_exactly_as_the_decode_job(archive, ray_local):
    import semarc

    got = _rows(semarc.read(str(archive["arch"]), concurrency=1))
    ok = [x["key"] for x in archive["rows"] if not x["key"].startswith("bad/")]
    assert set(got) == {x["key"] for x in archive["rows"]}
    _check_decoded(got, archive, ok)
    assert got["k/3"]["caption"] is None  # a record without a caption
    assert got["bad/text"]["image"].shape == (0, 0, 3) and got["bad/text"]["error"].startswith("image:")
    assert "not found" in got["bad/missing"]["error"]
    # keys and shards select what is read
    sel = _rows(semarc.read(archive["arch"], keys=["k/0", "k/4", "bad/text"], concurrency=1))
    assert set(sel) == {"k/0", "k/4", "bad/text"}
    _check_decoded(sel, archive, ["k/0", "k/4"])
    first = pq.read_table(archive["arch"] / "part-00000.parquet", columns=["key"]).column("key").to_pylist()
    assert set(_rows(semarc.read(archive["arch"], shards=[0], concurrency=1))) == set(first)


@pytest.mark.slow
def test_read_reports_damaged_shards_and_records_and_reads_the_rest(archive, ray_local):
    """A copy with a truncated shard and one record whose image bytes are
    flipped: the shard is one error row naming it, the record an error row
    with the decode job's reason, every other record decodes exactly."""
    import pyarrow as pa

    import semarc

    bad = archive["base"] / "damaged"
    shutil.copytree(archive["arch"], bad)
    p0 = bad / "part-00000.parquet"
    p0.write_bytes(p0.read_bytes()[:300])
    t = pq.read_table(bad / "part-00001.parquet")
    rows = t.to_pylist()
    victim = next(r for r in rows if r["status"] == "ok")
    img = bytearray(victim["image"])
    img[len(img) // 2] ^= 0x5A
    victim["image"] = bytes(img)
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), bad / "part-00001.parquet")

    got = _rows(semarc.read(str(bad), concurrency=1))
    assert "not a Parquet file" in got["shard:part-00000"]["error"] and got["shard:part-00000"]["key"] is None
    assert got[victim["key"]]["image"].size == 0 and got[victim["key"]]["error"].startswith("image:")
    in_shard0 = set(pq.read_table(archive["arch"] / "part-00000.parquet").column("key").to_pylist())
    rest = [x["key"] for x in archive["rows"] if not x["key"].startswith("bad/") and x["key"] not in in_shard0
            and x["key"] != victim["key"]]
    assert rest
    _check_decoded(got, archive, rest)


def test_read_refuses_what_is_not_an_archive(tmp_path):
    import semarc

    with pytest.raises(semarc.JobError, match="no shards"):
        semarc.read(str(tmp_path))


@pytest.mark.slow
def test_read_an_s3_archive(archive, s3_env, tmp_path):  # noqa: F811
    """The archive uploaded to a moto S3 bucket; credentials and endpoint
    from the environment (the Ray workers inherit them)."""
    import ray

    import semarc

    s3 = s3_env["s3"]
    for p in archive["arch"].iterdir():
        if p.is_file():
            s3.put_object(Bucket="dst", Key=f"api/{p.name}", Body=p.read_bytes())
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        got = _rows(semarc.read("s3://dst/api", concurrency=1))
    finally:
        ray.shutdown()
    assert set(got) == {x["key"] for x in archive["rows"]}
    _check_decoded(got, archive, [x["key"] for x in archive["rows"] if not x["key"].startswith("bad/")])
    assert got["bad/text"]["error"].startswith("image:")


_STREAM = r"""
import json, os, sys, time, threading
import numpy as np
import ray
from PIL import Image
import semarc

def rss_mb():  # private memory: the object store's pages mapped into the driver are shared, bounded by its size
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) / 1024

base, n, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{base}/img", exist_ok=True)
photos = [np.asarray(Image.open(f"{base}/sample/images/{p}").convert("RGB").resize((side + 64, side + 64)))
          for p in sorted(os.listdir(f"{base}/sample/images"))]
rows = []
for i in range(n):
    a = photos[i % len(photos)]
    dx, dy = (i * 7) % 64, (i * 13) % 64
    Image.fromarray(a[dy:dy + side, dx:dx + side]).save(f"{base}/img/{i}.png", compress_level=1)
    rows.append({"uri": f"img/{i}.png", "key": f"{i:04d}"})
open(f"{base}/m.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
ray.init(address="local", num_cpus=2, object_store_memory=80 * 1024 ** 2, include_dashboard=False,
         logging_level="WARNING")
rep = semarc.encode(f"{base}/m.jsonl", f"{base}/arch", codec="semarc-fast", shard_size=16, progress=False)
assert rep.ok == n, rep
peak, stop = [rss_mb()], threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
start = None
seen, pixels_bytes = set(), 0
for b in semarc.read(f"{base}/arch", concurrency=2, batch_size=8).iter_batches(batch_size=8, batch_format="numpy"):
    if start is None:  # from the first batch on: Ray Data's execution machinery is loaded by then
        start, peak[0] = rss_mb(), 0
    for k, im, e in zip(b["key"], b["image"], b["error"]):
        assert e is None and im.shape == (side, side, 3)
        seen.add(k)
        pixels_bytes += im.nbytes
stop.set()
store_mb = ray.cluster_resources()["object_store_memory"] / 2 ** 20
print(json.dumps({"records": len(seen), "decoded_mb": pixels_bytes / 2 ** 20, "driver_start_mb": start,
                  "driver_peak_mb": peak[0], "object_store_mb": store_mb}))
"""


@pytest.mark.slow
def test_read_streams_an_archive_larger_than_the_object_store(tmp_path):
    """128 images of 512x512 (96 MiB decoded) read through an 80 MiB object
    store: every record comes out, and the driver's private memory, as it
    consumes the batches as they come, grows by far less than the decoded
    archive (its resident size also counts the object store's shared pages it
    has mapped, up to the store's 80 MiB)."""
    r = run_cli("sample", tmp_path / "sample")
    assert r.returncode == 0, r.stderr
    out = subprocess.run([sys.executable, "-c", _STREAM, str(tmp_path), "128", "512"], capture_output=True,
                         text=True, timeout=1500, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(got, indent=1))
    assert got["records"] == 128 and got["decoded_mb"] == pytest.approx(96, rel=0.01)
    assert got["driver_peak_mb"] - got["driver_start_mb"] < 40, got
    assert got["object_store_mb"] <= 80 < got["decoded_mb"], got
