"""Archives written by an earlier semarc decode to the same captions and pixels.

``tests/data/compat/<checkpoint>/`` holds one small archive per shipped
checkpoint (three crops of scikit-image photos with captions), written by
``scripts/compat_archive.py`` when the checkpoint shipped; ``expected.json``
has what that version decoded from them. The codec points' bitstreams and
footers are a promise: whatever the code becomes, these archives decode
exactly like this.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

DATA = Path(__file__).resolve().parent / "data" / "compat"
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))["archives"]


def pixels_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def recorded_pixels(record: dict, a: np.ndarray) -> str:
    """The record's pixels_sha256 when ``a`` is one of its recorded decodes
    (``pixels_sha256``, or ``pixels_sha256_also``: the same symbols through
    another CPU's float synthesis), else ``a``'s own digest (a mismatch)."""
    h = pixels_sha256(a)
    return record.get("pixels_sha256") if h in record.get("pixels_sha256_also", []) else h


def shard(name: str):
    import fsspec

    from semarc.jobs.shards import read_shard

    return read_shard(fsspec.filesystem("file"), str(DATA / name / "part-00000.parquet"))


def test_every_shipped_checkpoint_has_an_archive():
    from semarc.codec import zoo

    assert sorted(EXPECTED) == sorted(e.checkpoint for e in zoo.ZOO)
    assert sorted(p.name for p in DATA.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_archive_decodes_to_the_recorded_captions_and_pixels(name):
    """The coders the job's actors run, in this process with one torch thread
    (as the archives were decoded when they were made)."""
    import torch

    from semarc.workers.caption_worker import CaptionWorker
    from semarc.workers.image_worker import ImageWorker

    torch.set_num_threads(1)
    want = EXPECTED[name]
    table, meta = shard(name)
    profiles = json.loads(meta["semarc.profiles"])
    # the footer keeps naming the checkpoint id and its fingerprint
    assert profiles["image"]["codec"] == want["checkpoint"] == name
    assert profiles["image"]["fingerprint"] == want["fingerprint"]
    rows = table.to_pylist()
    images = ImageWorker(profiles["image"]["codec"], threads=1).decode_arrays(
        [r["image"] for r in rows], profiles)
    captions = CaptionWorker(profiles["caption"]["model"], profiles["caption"]["profile"], threads=1).decode(
        [r["caption"] for r in rows], profiles)
    got = {r["key"]: {"caption": c.get("caption"), "width": int(a.shape[1]), "height": int(a.shape[0]),
                      "pixels_sha256": recorded_pixels(want["records"].get(r["key"], {}), a),
                      "image_section_sha256": hashlib.sha256(r["image"]).hexdigest()}
           if isinstance(a, np.ndarray) else {"error": a, "caption": c}
           for r, a, c in zip(rows, images, captions)}
    assert got == {k: {f: v for f, v in rec.items() if f != "pixels_sha256_also"} for k, rec in want["records"].items()}


def test_decode_job_writes_the_recorded_captions_and_pixels(tmp_path):
    """``semarc decode`` on the archive of the default point, end to end."""
    from PIL import Image

    from semarc.codec import zoo

    name = zoo.checkpoint_id(zoo.DEFAULT)
    r = run_cli("decode", DATA / name, tmp_path / "out", "--num-cpus", "1", "--no-progress")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    want = EXPECTED[name]["records"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {x["key"]: x["caption"] for x in lines} == {k: v["caption"] for k, v in want.items()}
    for key, v in want.items():
        a = np.asarray(Image.open(tmp_path / "out" / "images" / f"{key}.png").convert("RGB"))
        assert recorded_pixels(v, a) == v["pixels_sha256"], key


def test_an_archive_naming_a_retired_point_fails_naming_it(tmp_path):
    """A copy of the semarc-h10s archive whose footer names semarc-h10m (a
    checkpoint removed before the first release): decode refuses before any
    work, with an error that names the point."""
    import pyarrow.parquet as pq

    from semarc.codec import zoo
    from semarc.workers.image_worker import ImageWorker

    src = tmp_path / "archive"
    src.mkdir()
    table = pq.read_table(DATA / "semarc-h10s" / "part-00000.parquet")
    meta = dict(table.schema.metadata)
    profiles = json.loads(meta[b"semarc.profiles"])
    profiles["image"]["codec"] = "semarc-h10m"
    meta[b"semarc.profiles"] = json.dumps(profiles, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), src / "part-00000.parquet")

    r = run_cli("decode", src, tmp_path / "out", "--num-cpus", "1", "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert "codec semarc-h10m was retired before the first release" in r.stderr
    assert "semarc-h10s" in r.stderr  # what superseded it
    assert not (tmp_path / "out" / "images").exists()
    with pytest.raises(zoo.RetiredCodecError, match="semarc-h10m"):
        ImageWorker("semarc-h10m")
