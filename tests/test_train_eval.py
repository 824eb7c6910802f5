"""train/evaluate.py: a run's state coded and scored on the corpus's validation
split (real bytes through ImageCoder, PSNR, LPIPS-Alex, DISTS), on demand and
every N steps inside the trainer without changing the run."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from semarc.cli import build_parser
from semarc.train import corpus, evaluate
from semarc.train import trainer as train

pytest.importorskip("compressai")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Two sources of small smooth-plus-texture photos, built into a corpus."""
    root = tmp_path_factory.mktemp("evalsrc")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96].astype(np.float32)
    sources = []
    for name, n in (("a", 7), ("b", 4)):
        d = root / name
        d.mkdir()
        items = []
        for i in range(n):
            base = np.stack([np.sin(xx / (6 + i) + c) * np.cos(yy / (5 + 2 * i) - c) for c in range(3)], -1)
            img = (127 + 90 * base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
            p = d / f"{name}{i}.png"
            Image.fromarray(img).save(p)
            items.append({"path": p.name, "sha256": corpus._sha256_file(p), "licence": "CC0"})
        sources.append({"name": name, "kind": "dir", "root": str(d), "items": items})
    out = root / "corpus"
    corpus.build(out, {"format": 1, "val_fraction": 0.15, "max_side": 2048, "sources": sources},
                 install=False, log=lambda *a: None)
    return str(out)


def _args(run, corpus_dir, *extra):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(["--run", str(run), "--corpus", corpus_dir, "--arch", "hyperprior", "--N", "8", "--M", "12",
                         "--batch", "2", "--crop", "64", "--lr", "1e-3", "--log-every", "2", "--save-every", "2",
                         *extra])


def test_train_eval_codes_the_validation_split(tmp_path, small_corpus):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    train.train(_args(run, small_corpus, "--steps", "2"))
    rec = evaluate.evaluate_run(run, which=("psnr", "lpips", "dists"), log=None)
    val = corpus.read_manifest(small_corpus, "val")
    assert rec["step"] == 2 and rec["images"] == len(val) == 2 and rec["split"] == "val"
    assert {r["key"] for r in rec["per_image"]} == {r["key"] for r in val}  # the held-out images only
    assert set(rec["per_source"]) == {"a", "b"}
    for r in rec["per_image"]:
        assert r["bytes"] > 3 and r["bpp"] == pytest.approx(8 * r["bytes"] / (r["width"] * r["height"]), abs=1e-6)
        assert 5 < r["psnr"] < 60 and 0 < r["lpips"] < 2 and 0 <= r["dists"] < 1
    assert rec["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rec["per_image"]]), abs=1e-6)
    lines = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["checkpoint"].endswith("step-0000002.pt")
    # the exported checkpoint is what the coder used: coding again gives the same bytes
    again = evaluate.evaluate_checkpoint(lines[0]["checkpoint"], evaluate.load_split(small_corpus), ("psnr",))
    assert [r["bytes"] for r in again["per_image"]] == [r["bytes"] for r in rec["per_image"]]
    with pytest.raises(SystemExit):
        evaluate.evaluate_run(run, split="train", log=None)
    args = build_parser().parse_args(["train-eval", "--run", str(run), "--metrics", "psnr,dists", "--max-side", "64"])
    assert args.func.__name__ == "cmd_train_eval" and args.max_side == 64


def test_eval_every_leaves_the_run_unchanged(tmp_path, small_corpus):
    """Evaluating inside the trainer every 2 steps changes nothing in the run:
    the same state as a run without it."""
    torch.set_num_threads(1)
    train.train(_args(tmp_path / "plain", small_corpus, "--steps", "4"))
    train.train(_args(tmp_path / "evald", small_corpus, "--steps", "4", "--eval-every", "2", "--eval-max-side", "64"))
    a = torch.load(tmp_path / "plain" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "evald" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["torch_rng"], b["torch_rng"]) and torch.equal(a["gen"], b["gen"])
    recs = [json.loads(x) for x in (tmp_path / "evald" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4] and all(r["max_side"] == 64 for r in recs)
    assert not (tmp_path / "plain" / "eval.jsonl").exists()


def test_eval_every_needs_a_corpus(tmp_path, small_corpus):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["--run", str(tmp_path / "r"), "--photos", str(tmp_path / "none*.png"), "--eval-every", "2"])
    with pytest.raises((SystemExit, ValueError)):
        train.train(args)


def test_bench_kodak_runs_on_the_validation_split(tmp_path, small_corpus):
    from semarc.bench import kodak

    val = sorted(r["key"] for r in corpus.read_manifest(small_corpus, "val"))
    r = kodak.run(str(tmp_path / "out"), baselines=["jpeg"], points=["semarc-f1"], corpus=small_corpus, max_side=64,
                  which=("psnr", "lpips"), speed_reps=0, plot=False)
    assert r["images"] == val and len(val) == 2  # the held-out photos alone, never a training one
    assert r["dataset"].startswith("the validation split of the corpus") and "<= 64 px" in r["dataset"]
    assert r["command"].endswith(f"--corpus {small_corpus} --max-side 64 --metrics psnr,lpips")
    sizes = {x["image"]: x for x in r["per_image"] if x["codec"] == "semarc"}
    assert set(sizes) == set(val)
    args = build_parser().parse_args(["bench", "kodak", "--out", "x", "--corpus", "d", "--max-side", "768"])
    assert (args.corpus, args.max_side) == ("d", 768)
