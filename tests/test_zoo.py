"""The image codec zoo (codec/zoo.py): what `semarc codecs` shows is what ships."""

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from semarc.codec import image_models, names, zoo

JSON_KEYS = {"name", "checkpoint", "arch", "kodak_bpp", "psnr", "lpips", "encode_img_s", "decode_img_s", "recipe",
             "default"}


def test_zoo_is_small_and_its_default_is_q1():
    assert 1 <= len(zoo.ZOO) <= 4
    assert len(set(zoo.names())) == 2 * len(zoo.ZOO)
    assert names.DEFAULT_CODEC == zoo.DEFAULT == "semarc-q1"
    assert zoo.checkpoint_id(zoo.DEFAULT) == "semarc-h05s"
    assert not set(zoo.names()) & set(zoo.RETIRED)
    assert {zoo.RETIRED[r] for r in zoo.RETIRED} <= {e.checkpoint for e in zoo.ZOO}


def test_every_zoo_checkpoint_ships_unchanged_and_nothing_else_does():
    """Checkpoint ids are immutable: the file's fingerprint is the one the
    registry (and every archive written with it) records."""
    shipped = image_models.shipped_rate_points()
    assert list(shipped) == [e.checkpoint for e in zoo.ZOO]
    tracked = sorted(p.stem for p in (REPO / "codec" / "weights").glob("*.pt"))
    assert tracked == sorted(shipped)
    for e in zoo.ZOO:
        m = image_models.load_checkpoint(shipped[e.checkpoint], name=e.checkpoint)
        assert (m.arch, m.fingerprint) == (e.arch, e.fingerprint), e.name
        assert f"N={m.config['N']} M={m.config['M']}" in e.size


def _bench(path: str, point: str) -> dict:
    r = json.loads((REPO / path).read_text())
    row = next(x for x in r["rows"] if x["codec"] == "semarc" and x["point"] == point)
    speed = r["speed"][point]["images_per_s"]
    return {"kodak_bpp": round(row["bpp"], 4), "psnr": round(row["psnr"], 2), "lpips": round(row["lpips"], 4),
            "encode_img_s": speed["semarc-encode"], "decode_img_s": speed["semarc-decode"]}


@pytest.mark.parametrize("path,checkpoint", [("bench/results/kodak-zoo/kodak.json", "semarc-h05s"),
                                             ("bench/results/kodak-zoo/kodak.json", "semarc-h10s"),
                                             ("bench/results/kodak.json", "semarc-f1")])
def test_zoo_figures_are_the_checked_in_benchmarks(path, checkpoint):
    e = zoo.entry(checkpoint)
    assert {k: getattr(e, k) for k in ("kodak_bpp", "psnr", "lpips", "encode_img_s", "decode_img_s")} \
        == _bench(path, checkpoint)


def test_mode_set_figures_are_the_checked_in_benchmarks():
    m = next(m for m in zoo.MODE_SETS if m.name == "semarc-q1-adaptive")
    quality = _bench("bench/results/kodak-speed-multires-q1/kodak.json", m.spec)
    assert {k: getattr(m, k) for k in quality} == quality
    row = next(x for x in json.loads((REPO / "bench/results/kodak-multires-q1/kodak.json").read_text())["rows"]
               if x["codec"] == "semarc")  # the quality run with the classical codecs: the same bytes
    assert (round(row["bpp"], 4), round(row["psnr"], 2), round(row["lpips"], 4)) == (
        m.kodak_bpp, m.psnr, m.lpips) and row["point"] == m.spec


def test_recipes_name_their_run_folders_and_export_the_checkpoint():
    for e in zoo.ZOO:
        assert e.recipe.startswith("semarc train-codec --run train_runs/")
        run = e.recipe.split("--run ")[1].split()[0]
        assert (REPO / run / "config.json").is_file() and (REPO / run / "log.jsonl").is_file(), run
        assert e.recipe.endswith(f"--export codec/weights/{e.checkpoint}.pt")
        init = e.recipe.split("--init ")[1].split()[0] if "--init " in e.recipe else None
        assert json.loads((REPO / run / "config.json").read_text())["init"] == init


def test_zoo_name_and_checkpoint_id_load_the_same_model_named_by_its_checkpoint():
    a, b = image_models.resolve("semarc-q2"), image_models.resolve("semarc-h10s")
    assert a.name == b.name == "semarc-h10s" and a.fingerprint == b.fingerprint


def test_jobs_record_the_checkpoint_id_not_the_zoo_name():
    from semarc.jobs.encode import EncodeOptions

    assert EncodeOptions().job_config()["codec"] == "semarc-h05s"
    assert EncodeOptions(codec="semarc-fast").job_config() == EncodeOptions(codec="semarc-f1").job_config()
    assert EncodeOptions(codec="x/y.pt").job_config()["codec"] == "x/y.pt"


@pytest.mark.parametrize("retired", sorted(zoo.RETIRED))
def test_retired_points_fail_with_an_error_naming_them(retired):
    from semarc.jobs.encode import EncodeOptions
    from semarc.jobs.inputs import JobError

    with pytest.raises(zoo.RetiredCodecError, match=f"codec {retired} was retired before the first release"):
        image_models.resolve(retired)
    with pytest.raises(JobError, match=f"codec {retired} was retired"):
        EncodeOptions(codec=retired).job_config()


def test_unknown_codec_lists_the_zoo():
    with pytest.raises(ValueError, match="semarc-q1, semarc-q2"):
        image_models.resolve("semarc-q9")


def test_codecs_command_table_and_json():
    r = run_cli("codecs")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "checkpoint", "arch"]
    for e in zoo.ZOO:
        row = next(x for x in lines if x.startswith(e.name + " "))
        assert e.checkpoint in row and f"{e.kodak_bpp:.4f}" in row and ("*" in row) == (e.name == zoo.DEFAULT)
        assert e.recipe in r.stdout
    assert "zoo:" in r.stdout
    j = run_cli("codecs", "--json")
    assert j.returncode == 0, j.stderr
    got = json.loads(j.stdout)
    assert [x["name"] for x in got] == [e.name for e in zoo.ZOO] + [m.name for m in zoo.MODE_SETS]
    for m in zoo.MODE_SETS:  # each mode set in the table too, with the checkpoint ids it records
        assert f"{m.name}: {m.spec}" in r.stdout and m.spec == zoo.checkpoint_id(m.spec)
    assert all(set(x) == JSON_KEYS for x in got)
    assert [x["name"] for x in got if x["default"]] == ["semarc-q1"]
    assert got[0]["checkpoint"] == "semarc-h05s" and got[0]["arch"] == "checkerboard"


def test_docs_name_only_shipped_or_retired_points():
    """README, docs and the model card name no checkpoint that is neither shipped nor listed as retired."""
    import re

    known = set(zoo.names()) | set(zoo.RETIRED)
    docs = [REPO / "README.md", REPO / "codec" / "weights" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in docs:
        for n in set(re.findall(r"semarc-(?:[a-z]+\d+[a-z]*|fast)\b", path.read_text(encoding="utf-8"))):
            assert n in known, (path.name, n)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for e in zoo.ZOO:
        assert e.name in readme and e.checkpoint in readme
    assert Path(REPO / "bench/results/kodak-zoo/kodak.png").is_file() and "kodak-zoo/kodak.png" in readme


def test_model_card_commands_rebuild_their_runs_configs():
    """Every training command in the model card (each step of each lineage) and
    each zoo recipe is the configuration its run folder records: rerunning it
    there resumes the same run instead of being refused."""
    import argparse
    import shlex

    from semarc.train import options, trainer

    card = (REPO / "codec" / "weights" / "README.md").read_text(encoding="utf-8")
    cmds = [line for line in card.splitlines() if line.startswith("semarc train-codec ")]
    assert len(cmds) == 19
    for cmd in cmds + [e.recipe for e in zoo.ZOO]:
        p = argparse.ArgumentParser()
        options.add_arguments(p)
        args = p.parse_args(shlex.split(cmd)[2:])
        recorded = json.loads((REPO / args.run / "config.json").read_text())
        if args.corpus and not (Path(args.corpus).expanduser() / "manifest.jsonl").is_file():
            # the train split's digest needs the built corpus (`semarc corpus`); the rest is compared
            assert len(recorded.pop("corpus")) == 64 and recorded["photos"] is None, cmd
            recorded.pop("corpus_dir")
            args.corpus = args.photos = None
        assert trainer._same_config(recorded, trainer.run_config(args)), cmd
