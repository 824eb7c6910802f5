"""train/corpus.py: the curated list, the fixed validation split (deterministic,
stratified by source, whole images, no overlap) and the corpus build on small
fake sources (no apt, no network)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semarc.train import corpus


def _fake_sources(root: Path, sizes: dict[str, int], seed: int = 0) -> dict:
    """Folders of small random photos-to-be, one per source, and their list."""
    rng = np.random.default_rng(seed)
    sources = []
    for name, n in sizes.items():
        d = root / name
        d.mkdir(parents=True)
        items = []
        for i in range(n):
            p = d / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (24 + i % 5, 32, 3), dtype=np.uint8)).save(p)
            items.append({"path": p.name, "sha256": corpus._sha256_file(p), "licence": "CC0"})
        sources.append({"name": name, "kind": "dir", "root": str(d), "licence": "CC0", "items": items})
    return {"format": 1, "val_fraction": 0.15, "max_side": 40, "sources": sources}


def test_shipped_list_is_well_formed():
    spec = corpus.load_spec()
    names = [s["name"] for s in spec["sources"]]
    assert len(names) == len(set(names)) and "shared-photos" in names and "skimage" in names
    for s in spec["sources"]:
        assert s["kind"] in ("shared", "skimage", "deb") and s["items"]
        assert not s.get("package", "").startswith("lomiri")
        for it in s["items"]:
            assert len(it["sha256"]) == 64 and "kodak" not in it["path"].lower() and "kodim" not in it["path"].lower()
            assert it.get("licence") or s.get("licence")
    split = corpus.split_of(spec)
    assert len(split) == sum(len(s["items"]) for s in spec["sources"])
    val = sum(v == "val" for v in split.values())
    assert 0.12 <= val / len(split) <= 0.2
    for s in spec["sources"]:  # every source contributes to both sides
        sides = {split[(s["name"], it["sha256"])] for it in s["items"]}
        assert sides == {"train", "val"}, s["name"]


def test_split_deterministic_stratified_and_independent_of_order(tmp_path):
    spec = _fake_sources(tmp_path, {"a": 20, "b": 7, "c": 2, "d": 1})
    split = corpus.split_of(spec)
    assert split == corpus.split_of(json.loads(json.dumps(spec)))  # deterministic
    shuffled = json.loads(json.dumps(spec))
    for s in shuffled["sources"]:
        s["items"].reverse()
    shuffled["sources"].reverse()
    assert corpus.split_of(shuffled) == split  # the order of the list plays no part
    for s in spec["sources"]:
        n = len(s["items"])
        val = [it for it in s["items"] if split[(s["name"], it["sha256"])] == "val"]
        assert len(val) == corpus.n_val(n, 0.15)
    assert corpus.n_val(20, 0.15) == 3 and corpus.n_val(7, 0.15) == 1 and corpus.n_val(2, 0.15) == 1
    assert corpus.n_val(1, 0.15) == 0  # a one-image source stays in training
    # adding a source does not move any other source's images between the splits
    more = _fake_sources(tmp_path / "more", {"e": 9}, seed=1)
    grown = {**spec, "sources": spec["sources"] + more["sources"]}
    assert {k: v for k, v in corpus.split_of(grown).items() if k[0] != "e"} == split


def test_build_writes_manifest_with_fixed_split_no_overlap(tmp_path):
    spec = _fake_sources(tmp_path / "src", {"a": 14, "b": 6})
    # an exact duplicate (same pixels, another file) is dropped
    dup = Path(spec["sources"][1]["root"]) / "dup.png"
    dup.write_bytes((Path(spec["sources"][0]["root"]) / "img000.png").read_bytes())
    Image.open(dup).save(dup.with_name("dup2.png"), compress_level=1)  # same pixels, other bytes
    spec["sources"][1]["items"].append({"path": "dup2.png", "sha256": corpus._sha256_file(dup.with_name("dup2.png"))})
    # a file whose bytes differ from the list is left out
    spec["sources"][1]["items"].append({"path": "img000.png", "sha256": "0" * 64})
    out = tmp_path / "corpus"
    summary = corpus.build(out, spec, install=False, log=lambda *a: None)
    rows = corpus.read_manifest(out)
    assert summary["images"] == len(rows) == 20
    assert any("same pixels" in p for p in summary["left_out"])
    assert any("SHA-256" in p for p in summary["left_out"])
    train, val = corpus.read_manifest(out, "train"), corpus.read_manifest(out, "val")
    assert {r["key"] for r in train}.isdisjoint({r["key"] for r in val})
    assert {r["pixels_sha256"] for r in train}.isdisjoint({r["pixels_sha256"] for r in val})
    assert len(train) + len(val) == len(rows)
    assert summary["per_source"] == {"a": {"train": 12, "val": 2}, "b": {"train": 5, "val": 1}}
    for r in rows:
        im = Image.open(r["path"])
        assert im.mode == "RGB" and max(im.size) <= 40 and (r["width"], r["height"]) == im.size
        assert r["sha256"] == corpus._sha256_file(Path(r["path"]))
    # rebuilding gives the same manifest, byte for byte (files reused)
    before = (out / "manifest.jsonl").read_bytes()
    corpus.build(out, spec, install=False, log=lambda *a: None)
    assert (out / "manifest.jsonl").read_bytes() == before
    assert corpus.split_digest(train) == corpus.split_digest(list(reversed(train)))


def test_reserved_package_refused(tmp_path):
    spec = {"format": 1, "sources": [{"name": "x", "kind": "deb", "package": "lomiri-wallpapers", "items": []}]}
    p = tmp_path / "s.json"
    p.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="reserved"):
        corpus.load_spec(p)
    with pytest.raises(ValueError, match="reserved"):
        corpus.install_packages(["lomiri-wallpapers-20.04"])


def test_trainer_reads_the_train_split(tmp_path):
    from semarc.train import trainer
    from semarc.train.options import add_arguments
    import argparse

    spec = _fake_sources(tmp_path / "src", {"a": 8})
    corpus.build(tmp_path / "c", spec, install=False, log=lambda *a: None)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--run", str(tmp_path / "run"), "--corpus", str(tmp_path / "c")])
    paths = trainer.training_paths(args)
    val = {r["path"] for r in corpus.read_manifest(tmp_path / "c", "val")}
    assert len(paths) == 7 and not set(paths) & val
    cfg = trainer.run_config(args)
    assert cfg["photos"] is None and len(cfg["corpus"]) == 64
    other = dict(cfg, corpus_dir="/elsewhere")
    assert trainer._same_config(cfg, other)  # the corpus may move, its train split may not
    assert not trainer._same_config(cfg, dict(cfg, corpus="0" * 64))


def test_oversample_lists_a_source_k_times_and_is_recorded(tmp_path):
    from semarc.train import trainer
    from semarc.train.options import add_arguments
    import argparse

    spec = _fake_sources(tmp_path / "src", {"a": 8, "b": 7})
    corpus.build(tmp_path / "c", spec, install=False, log=lambda *a: None)
    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--run", str(tmp_path / "run"), "--corpus", str(tmp_path / "c")]
    plain = trainer.training_paths(p.parse_args(base))
    args = p.parse_args(base + ["--oversample", "b=3"])
    paths = trainer.training_paths(args)
    rows = {r["path"]: r["source"] for r in corpus.read_manifest(tmp_path / "c", "train")}
    n_a = sum(rows[q] == "a" for q in plain)
    n_b = sum(rows[q] == "b" for q in plain)
    assert n_a and n_b and len(paths) == n_a + 3 * n_b
    assert sorted(set(paths)) == plain and all(paths.count(q) == (3 if rows[q] == "b" else 1) for q in plain)
    photos = trainer.load_photos(paths)  # a repeated photo is one tensor, not a copy
    assert len({id(t) for t in photos}) == len(plain)

    class TinyAnalysis(torch.nn.Module):  # a small g_a for the whole-photo latents
        downsampling_factor = 16

        def __init__(self):
            super().__init__()
            self.g_a = torch.nn.Conv2d(3, 4, 16, stride=16)

    latents = trainer._compute_latents(TinyAnalysis(), paths)  # ... and its latents are computed once
    per_photo = len(trainer.WHOLE_PHOTO_SCALES)
    assert len(latents) == per_photo * len(paths) and len({id(t) for t in latents}) == per_photo * len(plain)
    cfg = trainer.run_config(args)
    assert cfg["oversample"] == "b=3"
    assert not trainer._same_config(cfg, trainer.run_config(p.parse_args(base)))
    # a weight of 1 is the default: not recorded, the same run as without the option
    assert "oversample" not in trainer.run_config(p.parse_args(base + ["--oversample", "b=1"]))
    for bad in ("c=2", "b=0", "b", "b=x", "b=\u00b2"):
        with pytest.raises(SystemExit):
            trainer.run_config(p.parse_args(base + ["--oversample", bad]))
    with pytest.raises(SystemExit, match="--corpus"):
        trainer.run_config(p.parse_args(["--run", str(tmp_path / "r2"), "--oversample", "b=2"]))


def test_max_side_trains_on_the_photos_as_the_validation_split_is_downscaled(tmp_path):
    """--max-side L: the trainer's photos are the corpus photos downscaled as
    `load_split` downscales the validation split (the same pixels, bit for
    bit, for a photo read both ways); photos that fit stay as stored; the
    option is part of a run's identity only when set."""
    import argparse

    from semarc.train import evaluate, trainer
    from semarc.train.options import add_arguments

    spec = _fake_sources(tmp_path / "src", {"a": 8})
    corpus.build(tmp_path / "c", spec, install=False, log=lambda *a: None)
    val = corpus.read_manifest(tmp_path / "c", "val")
    [shrunk] = trainer.load_photos([val[0]["path"]], max_side=20)
    [stored] = trainer.load_photos([val[0]["path"]])
    [seen] = evaluate.load_split(str(tmp_path / "c"), "val", max_side=20)
    assert seen["key"] == val[0]["key"]
    assert stored.shape == (3, val[0]["height"], val[0]["width"]) and max(shrunk.shape[1:]) == 20
    assert np.array_equal(shrunk.permute(1, 2, 0).numpy(), seen["image"])
    assert torch.equal(trainer.load_photos([val[0]["path"]], max_side=40)[0], stored)  # it fits already

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--run", str(tmp_path / "run"), "--corpus", str(tmp_path / "c")]
    plain = trainer.run_config(p.parse_args(base))
    capped = trainer.run_config(p.parse_args(base + ["--max-side", "768"]))
    assert "max_side" not in plain and capped["max_side"] == 768
    assert not trainer._same_config(plain, capped)
    with pytest.raises(SystemExit, match="max-side"):
        trainer.run_config(p.parse_args(base + ["--max-side", "10"]))
