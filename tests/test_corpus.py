"""Bad and unusual inputs: a corpus of more than 20 kinds, each with its
expected outcome, through one encode and one decode job (local Ray). A bad
input becomes an error row with a reason and the job goes on; odd but valid
inputs encode by the documented rule (docs/format.md, "Input images");
keys never write outside DST; manifest-level problems stop the job before
any work."""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_cli

pytestmark = pytest.mark.slow


def _png(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")  # 2-D uint8: L, uint16: I;16, HxWx4: RGBA
    return b.getvalue()


def _rgb(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
    return (base // 2 + rng.integers(0, 64, (h, w, 3), dtype=np.uint8)).astype(np.uint8)


def _save(im, fmt, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _bomb_png(w=60000, h=60000) -> bytes:
    """A tiny PNG whose header declares w x h pixels."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _corpus(d: Path):
    img = Image.fromarray(_rgb(40, 56))
    jpg, png = _save(img, "JPEG", quality=90), _save(img, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    pal = Image.fromarray(_rgb(24, 32)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    frames = [Image.fromarray(_rgb(20, 30, s)) for s in range(3)]
    cmyk = Image.fromarray(_rgb(32, 48)).convert("CMYK")
    g16 = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    kinds = [
        # key, file bytes (None: no file), caption, expected: ("ok", (w, h)) or ("error", substring)
        ("zero-byte", b"", None, ("error", "empty")),
        ("truncated-jpeg", jpg[: len(jpg) // 3], None, ("error", "image:")),
        ("truncated-png", png[: len(png) // 2], None, ("error", "image:")),
        ("non-image", b"%PDF-1.4 this is not an image\n" * 20, None, ("error", "cannot decode")),
        ("png-named-jpg", png, None, ("ok", (56, 40))),
        ("bomb", _bomb_png(), None, ("error", "decompression bomb")),
        ("too-large", _bomb_png(8000, 6000), None, ("error", "pixel limit")),
        ("one-pixel", _png(np.array([[[200, 10, 30]]], np.uint8)), None, ("ok", (1, 1))),
        ("very-wide", _png(_rgb(10, 100000)), None, ("ok", (100000, 10))),
        ("png-16bit", _png(g16), None, ("ok", (40, 30))),
        ("cmyk-jpeg", _save(cmyk, "JPEG"), None, ("ok", (48, 32))),
        ("palette-transparent", _save(pal, "PNG"), None, ("ok", (32, 24))),
        ("animated-gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:]), None, ("ok", (30, 20))),
        ("animated-webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]), None, ("ok", (30, 20))),
        ("exif-rotated", _save(img, "JPEG", exif=exif), None, ("ok", (40, 56))),
        ("grayscale", _png(np.ascontiguousarray(_rgb(30, 20)[..., 0])), None, ("ok", (20, 30))),
        ("rgba", _png(np.dstack([_rgb(16, 16), np.full((16, 16), 128, np.uint8)])), None, ("ok", (16, 16))),
        ("missing-file", None, None, ("error", "image:")),
        ("a-directory", "dir", None, ("error", "image:")),
        ("empty-caption", png, "", ("ok", (56, 40))),
        ("huge-caption", png, "a long caption " * 7000, ("ok", (56, 40))),
        ("unicode-caption", png, "emoji 🐶, ünïcödé, 中文, \x00 control", ("ok", (56, 40))),
        ("../../escape", png, "a key that climbs out", ("ok", (56, 40))),
        ("/etc/passwd", png, "an absolute key", ("ok", (56, 40))),
    ]
    rows = []
    (d / "dir.png").mkdir()
    for i, (key, data, cap, _) in enumerate(kinds):
        name = "dir.png" if data == "dir" else f"f{i:02d}.{'jpg' if key == 'png-named-jpg' else 'img'}"
        if isinstance(data, bytes):
            (d / name).write_bytes(data)
        row = {"uri": name, "key": key}
        if cap is not None:
            row["caption"] = cap
        rows.append(row)
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return kinds


@pytest.fixture(scope="module")
def corpus_job(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    src = d / "src"
    src.mkdir()
    kinds = _corpus(src)
    out, dec = d / "out", d / "dec"
    r = run_cli("encode", src / "manifest.jsonl", out, "--shard-size", "8", "--num-cpus", "2", "--no-progress")
    rd = run_cli("decode", out, dec, "--num-cpus", "2", "--no-progress")
    return {"kinds": kinds, "out": out, "dec": dec, "encode": r, "decode": rd, "d": d}


def test_corpus_has_more_than_twenty_kinds(corpus_job):
    assert len(corpus_job["kinds"]) >= 20


def test_every_input_gets_its_expected_row(corpus_job):
    r = corpus_job["encode"]
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    t = pa.concat_tables([pq.read_table(p) for p in sorted(corpus_job["out"].glob("part-*.parquet"))])
    rows = {x["key"]: x for x in t.to_pylist()}
    assert len(rows) == t.num_rows == len(corpus_job["kinds"])
    for key, _, _, (status, want) in corpus_job["kinds"]:
        row = rows[key]
        assert row["status"] == status, (key, row["error"])
        if status == "error":
            assert want in row["error"], (key, row["error"])
        else:
            assert (row["width"], row["height"]) == want, key


def test_ok_records_decode_at_their_size_and_captions_exactly(corpus_job):
    rd = corpus_job["decode"]
    assert rd.returncode == 0, rd.stdout + rd.stderr[-3000:]
    dec = corpus_job["dec"]
    caps = {json.loads(x)["key"]: json.loads(x)["caption"] for x in (dec / "captions.jsonl").read_text().splitlines()}
    for key, _, cap, (status, want) in corpus_job["kinds"]:
        if status != "ok":
            assert key not in caps
            continue
        assert caps[key] == cap, key
    files = [p for p in dec.rglob("*") if p.is_file() and p.suffix == ".png"]
    assert len(files) == sum(1 for k in corpus_job["kinds"] if k[3][0] == "ok")
    for p in files:  # every output lies inside DST
        assert dec.resolve() in p.resolve().parents
    assert not (corpus_job["d"] / "escape.png").exists() and not Path("/etc/passwd.png").exists()
    sizes = sorted(Image.open(p).size for p in files)
    assert sizes == sorted(want for _, _, _, (s, want) in corpus_job["kinds"] if s == "ok")


@pytest.mark.parametrize("manifest, why", [
    (b'{"uri": "a.png", "key": "x"}\n{"uri": "b.png", "key": "x"}\n', "duplicate key"),
    (b'{"path": "a.png"}\n', "no 'uri' column"),
    (b'{"uri": "a.png", "caption": "\xff\xfe"}\n', "utf-8"),
])
def test_manifest_problems_stop_the_job_before_any_work(tmp_path, manifest, why):
    (tmp_path / "m.jsonl").write_bytes(manifest)
    r = run_cli("encode", tmp_path / "m.jsonl", tmp_path / "out", "--no-progress")
    assert r.returncode == 1 and why.lower() in (r.stdout + r.stderr).lower(), r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
