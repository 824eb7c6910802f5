"""Generative refinement at decode (generate/refiner.py, workers/refiner_worker.py,
``semarc decode --refiner``), with a tiny random Stable Diffusion pipeline
built here and loaded from its folder by the real loading code."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

pytest.importorskip("diffusers", reason="the refine extra (diffusers) is not installed")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny_sd")))


def test_refiner_keeps_sizes_and_is_reproducible_per_record(tiny_sd):
    from semarc.generate.refiner import Refiner, RefinerConfig, RefinerError

    r = Refiner(RefinerConfig(model=tiny_sd, steps=4, strength=0.5))
    assert r.multiple == 4 and r.describe()["pipeline"] == "StableDiffusionImg2ImgPipeline"
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((37, 53, 3), (48, 64, 3), (37, 50, 3), (2, 3, 3))]
    out = r.refine(ims, ["a red barn", None, "a cat", "dot"], ["k1", "k2", "k3", "k4"])
    assert [o.shape for o in out] == [i.shape for i in ims] and all(o.dtype == np.uint8 for o in out)
    assert all((o != i).mean() > 0.5 for o, i in zip(out, ims))  # redrawn, not passed through
    # a record refines the same way alone or in a batch; another key (seed) differs
    assert np.array_equal(r.refine(ims[2:3], ["a cat"], ["k3"])[0], out[2])
    assert not np.array_equal(r.refine(ims[2:3], ["a cat"], ["k9"])[0], out[2])
    with pytest.raises(RefinerError, match="fewer than one"):
        Refiner(RefinerConfig(model=tiny_sd, steps=2, strength=0.3))
    with pytest.raises(RefinerError, match="cannot load"):
        Refiner(RefinerConfig(model=str(Path(tiny_sd) / "nope")))


@pytest.mark.slow
def test_decode_job_refines_every_image_with_its_caption(tiny_sd, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i, (h, w) in enumerate(((40, 56), (64, 48), (33, 45))):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        (src / f"{i}.png").write_bytes(buf.getvalue())
        rows.append({"uri": f"{i}.png", "key": f"r/{i}", **({"caption": f"photo {i}"} if i != 1 else {})})
    (src / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = tmp_path / "enc"
    r = run_cli("encode", src / "m.jsonl", enc, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]

    plain, refined = tmp_path / "plain", tmp_path / "refined"
    r = run_cli("decode", enc, plain, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["--refiner", tiny_sd, "--refine-steps", "4", "--refine-strength", "0.5", "--num-cpus", "2",
            "--no-progress"]
    r = run_cli("decode", enc, refined, *args)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    for i, (h, w) in enumerate(((40, 56), (64, 48), (33, 45))):
        a = np.asarray(Image.open(plain / "images" / "r" / f"{i}.png"))
        b = np.asarray(Image.open(refined / "images" / "r" / f"{i}.png"))
        assert a.shape == b.shape == (h, w, 3) and (a != b).mean() > 0.5
    caps = [json.loads(x) for x in (refined / "captions.jsonl").read_text().splitlines()]
    assert caps == [{"key": "r/0", "caption": "photo 0"}, {"key": "r/1", "caption": None},
                    {"key": "r/2", "caption": "photo 2"}]
    done = json.loads((refined / "_SUCCESS").read_text())
    assert done["decoded"] == 3 and done["refiner"]["model"] == tiny_sd and done["refiner"]["strength"] == 0.5

    r = run_cli("decode", enc, refined, *args)  # resumes: nothing left to do
    assert r.returncode == 0 and "(1 already done)" in r.stdout, r.stdout + r.stderr[-2000:]
    r = run_cli("decode", enc, refined, *args[:4], "--refine-strength", "0.75", *args[6:])
    assert r.returncode == 1 and "other refinement options" in r.stderr
