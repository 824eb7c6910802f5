import json

import numpy as np
import pytest

from semarc.bench import kodak
from semarc.cli import build_parser


def _crops():
    import skimage.data

    return [("astronaut", np.ascontiguousarray(skimage.data.astronaut()[100:276, 150:390])),
            ("chelsea", np.ascontiguousarray(skimage.data.chelsea()[40:216, 100:340]))]


def test_bench_kodak_machinery_on_two_crops(tmp_path):
    r = kodak.run(str(tmp_path), baselines=["webp", "jpeg"], points=["semarc-f1"], images=_crops(), speed_reps=1)
    saved = json.loads((tmp_path / "kodak.json").read_text())
    assert saved["rows"] == r["rows"]
    assert (tmp_path / "kodak.md").read_text().startswith("# Kodak")
    assert (tmp_path / "kodak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {x["codec"] for x in saved["rows"]} == {"semarc", "webp", "jpeg"}
    for row in saved["rows"]:
        assert set(row) >= {"codec", "point", "bpp", "psnr", "ms_ssim", "lpips", "lpips_vgg", "dists", "reached"}
        assert row["point"] == "semarc-f1" and 0 <= row["reached"] <= 2
        assert row["bpp"] > 0 and 10 < row["psnr"] < 60 and 0 < row["ms_ssim"] <= 1 and 0 < row["lpips"] < 1
        assert 0 < row["lpips_vgg"] < 1 and 0 < row["dists"] < 1
    assert "| LPIPS-VGG | DISTS |" in (tmp_path / "kodak.md").read_text()
    sem = {x["image"]: x for x in saved["per_image"] if x["codec"] == "semarc"}
    assert len(sem) == 2
    for x in saved["per_image"]:
        assert x["target"] == sem[x["image"]]["bytes"]
        if x["reached"]:
            assert x["bytes"] <= x["target"]
        else:  # not reached: the codec's floor, which is larger than the target
            assert x["bytes"] > x["target"] and x["quality"] == {"webp": 0, "jpeg": 1}[x["codec"]]
    sp = saved["speed"]["semarc-f1"]
    assert sp["images"] == 2 and sp["same_strings_as_compressai"] == 2 and sp["same_pixels_as_compressai"] == 2
    assert set(sp["images_per_s"]) >= {"semarc-encode", "semarc-decode", "compressai-compress",
                                       "compressai-decompress"}
    assert saved["versions"]["torch"] and saved["command"].startswith("semarc bench kodak")
    assert saved["command"].endswith("--baselines webp,jpeg --points semarc-f1")


def test_match_size_takes_largest_file_at_or_below_target():
    a = _crops()[0][1]
    b = kodak.make_baselines(["jpeg"])[0]["jpeg"]
    sizes = {q: len(b.encode(a, q)) for q in (1, 20, 21, 60)}
    q, data, reached = kodak.match_size(b, a, sizes[20] + (sizes[21] - sizes[20]) // 2)
    assert reached and q == 20 and len(data) == sizes[20]
    q, data, reached = kodak.match_size(b, a, sizes[1] - 1)
    assert not reached and q == 1 and len(data) == sizes[1]


def test_unknown_baseline_refused_and_cli_accepts_kodak():
    import pytest

    with pytest.raises(ValueError):
        kodak.make_baselines(["gif"])
    args = build_parser().parse_args(["bench", "kodak", "--out", "x", "--baselines", "webp,jpeg"])
    assert args.what == "kodak" and args.baselines == "webp,jpeg"


def test_bench_runs_on_any_folder_with_chosen_metrics(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, a in _crops():
        Image.fromarray(a).save(folder / f"{name}.png")
    (folder / "_skip.png").write_bytes(b"not an image")
    r = kodak.run(str(tmp_path / "out"), baselines=["jpeg"], points=["semarc-f1"], images_dir=str(folder),
                  which=("psnr", "lpips", "dists"), speed_reps=0, plot=False)
    assert r["images"] == ["astronaut", "chelsea"] and r["dataset"] == str(folder)
    assert r["command"].endswith(f"--images {folder} --metrics psnr,lpips,dists")
    assert r["min_reached"] == 2  # 20 of 24, scaled to the folder's size
    for row in r["rows"]:
        assert "dists" in row and "lpips_vgg" not in row and "ms_ssim" not in row
    assert (tmp_path / "out" / "kodak.md").read_text().startswith(f"# {folder}:")
    args = build_parser().parse_args(["bench", "kodak", "--out", "x", "--images", "d", "--metrics", "psnr,lpips"])
    assert args.images == "d" and args.metrics == "psnr,lpips"


def test_speed_runs_on_sizes_that_are_not_whole_strides(tmp_path):
    """The speed measurement's CompressAI reference pads as the coder pads: a
    stride-64 point on a 70x90 image (not a multiple of 64) is measured, and
    its reference decode is cropped back to the image."""
    import torch

    from semarc.codec import image_models
    from semarc.codec.image import ImageCoder

    torch.manual_seed(0)
    path = tmp_path / "ckbd.pt"
    image_models.save_checkpoint(path, "checkerboard", {"N": 16, "M": 24},
                                 image_models.build("checkerboard", {"N": 16, "M": 24}), meta={})
    img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    sp = kodak.measure_speed(ImageCoder(str(path)), [("a", img)], reps=1)
    assert sp["images_per_s"]["semarc-decode"] > 0 and sp["images_per_s"]["compressai-decompress"] > 0
    assert sp["same_pixels_as_compressai"] == 1  # the same symbols, cropped back to the same 70x90 pixels


def test_per_source_compares_each_corpus_source_with_the_summary_codec():
    """A corpus split's images are named SOURCE/NAME: the report gains a
    table per source, semarc against the summary's classical codec (the best
    by PSNR among those reaching the target) over that source's images only;
    Kodak-style names give no such table."""
    def img(codec, image, psnr, lpips, reached=True):
        return {"codec": codec, "point": "p", "image": image, "bpp": 0.03, "psnr": psnr, "lpips": lpips,
                "reached": reached}

    per_image = [img("semarc", "walls/a", 30.0, 0.20), img("semarc", "walls/b", 32.0, 0.10),
                 img("semarc", "photos/c", 24.0, 0.30),
                 img("avif", "walls/a", 36.0, 0.10), img("avif", "walls/b", 38.0, 0.10),
                 img("avif", "photos/c", 24.5, 0.60),
                 img("jpeg", "walls/a", 20.0, 0.9), img("jpeg", "walls/b", 20.0, 0.9),
                 img("jpeg", "photos/c", 20.0, 0.9)]
    images = ["photos/c", "walls/a", "walls/b"]
    rows = [kodak._mean_row(c, "p", [x for x in per_image if x["codec"] == c]) for c in ("semarc", "avif", "jpeg")]
    r = {"images": images, "rows": rows, "per_image": per_image, "points": {"p": {}}, "min_reached": 3,
         "baselines": {"avif": "-", "jpeg": "-"}, "command": "c", "machine": {"cpu": "x", "cores": 1},
         "torch_threads": 1, "dataset": "d"}
    b, by = kodak.per_source(r, "p")
    assert b["codec"] == "avif"
    assert [x["source"] for x in by] == ["photos", "walls"] and [x["images"] for x in by] == [1, 2]
    assert by[0]["psnr_gap"] == -0.5 and by[0]["lpips_reduction"] == 0.5
    assert by[1]["psnr_gap"] == -6.0 and by[1]["lpips_reduction"] == -0.5
    md = kodak.markdown(r)
    assert "| `p` | walls | 2 | 0.0300 | 31.00 | 0.1500 | avif |" in md and md.count("| `p` | ") == 3
    r["images"] = ["kodim01", "kodim02"]
    assert "## Per source" not in kodak.markdown(r)


def test_latent_steps_measure_each_point_plainly_and_searched_side_by_side(tmp_path):
    """``--latent-steps 0,N``: each point twice, the search row matched to the
    classical codecs at its own bytes and compared with the plain row."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, a in _crops():
        Image.fromarray(a).save(folder / f"{name}.png")
    r = kodak.run(str(tmp_path / "out"), baselines=["jpeg"], points=["semarc-f1"], images_dir=str(folder),
                  which=("psnr", "lpips"), speed_reps=1, plot=False, latent_steps=(0, 4))
    assert list(r["points"]) == ["semarc-f1", "semarc-f1-search4"]
    assert r["points"]["semarc-f1-search4"]["latent_steps"] == 4
    assert r["points"]["semarc-f1-search4"]["latent_loss"] == [0.001, 0.0]
    assert list(r["speed"]) == ["semarc-f1"]  # no speed round for a search row: its seconds per image instead
    assert r["command"].endswith("--latent-steps 0,4")
    sem = {x["point"]: x for x in r["rows"] if x["codec"] == "semarc"}
    plain, searched = sem["semarc-f1"], sem["semarc-f1-search4"]
    assert searched["encode_s"] > plain["encode_s"] > 0
    jpeg_targets = {x["point"]: x["target"] for x in r["per_image"] if x["codec"] == "jpeg"}
    assert set(jpeg_targets) == {"semarc-f1", "semarc-f1-search4"}  # each row matched at its own bytes
    md = (tmp_path / "out" / "kodak.md").read_text()
    assert "## Latent search" in md
    line = next(l for l in md.splitlines() if l.startswith("| semarc-f1-search4 | semarc-f1 |"))
    assert f"{searched['psnr'] - plain['psnr']:+.2f}" in line
    assert f"{100 * (searched['bpp'] / plain['bpp'] - 1):+.1f}%" in line


def test_only_and_latent_loss_measure_a_subset_against_a_given_search_loss(tmp_path):
    """``--only`` keeps the named images in the set's order; ``--latent-loss``
    is the loss the search rows minimise, recorded and named in their label."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    crops = _crops() + [("b-left-out", _crops()[0][1][:64, :96])]
    for name, a in crops:
        Image.fromarray(a).save(folder / f"{name}.png")
    names = sorted(n for n, _ in crops)
    assert names[1] == "b-left-out"
    with pytest.raises(SystemExit, match="no image named nope"):
        kodak.run(str(tmp_path / "x"), baselines=["none"], points=["semarc-f1"], images_dir=str(folder),
                  only=["nope"], which=("psnr", "lpips"), speed_reps=0, plot=False)
    with pytest.raises(SystemExit, match="give --latent-steps"):
        kodak.run(str(tmp_path / "x"), baselines=["none"], points=["semarc-f1"], images_dir=str(folder),
                  latent_loss="0.002", which=("psnr", "lpips"), speed_reps=0, plot=False)
    with pytest.raises(SystemExit, match="--latent-loss"):
        kodak.run(str(tmp_path / "x"), baselines=["none"], points=["semarc-f1"], images_dir=str(folder),
                  latent_steps=(2,), latent_loss="0.002,x", which=("psnr", "lpips"), speed_reps=0, plot=False)
    r = kodak.run(str(tmp_path / "out"), baselines=["none"], points=["semarc-f1"], images_dir=str(folder),
                  only=[names[-1], names[0]], which=("psnr", "lpips"), speed_reps=0, plot=False,
                  latent_steps=(0, 2), latent_loss="0.002,0.5")
    assert r["images"] == [names[0], names[-1]]
    assert list(r["points"]) == ["semarc-f1", "semarc-f1-search2-loss0.002,0.5"]
    assert r["points"]["semarc-f1-search2-loss0.002,0.5"]["latent_loss"] == [0.002, 0.5]
    assert {x["image"] for x in r["per_image"]} == {names[0], names[-1]}
    assert r["command"].endswith(f"--latent-steps 0,2 --latent-loss 0.002,0.5 --only {names[-1]},{names[0]}")


def test_a_mode_set_is_measured_beside_its_points_with_its_own_speed(tmp_path):
    r = kodak.run(str(tmp_path), baselines=["none"], points=["semarc-f1", "semarc-fast+semarc-fast@1/2"],
                  images=_crops(), speed_reps=1, which=("psnr", "lpips"))
    ms = "semarc-f1+semarc-f1@1/2"  # recorded with checkpoint ids
    assert list(r["points"]) == ["semarc-f1", ms]
    assert r["points"][ms]["arch"] == "multires" and [m["scale"] for m in r["points"][ms]["config"]["modes"]] == [
        "1/1", "1/2"]
    per = {(x["point"], x["image"]): x for x in r["per_image"] if x["codec"] == "semarc"}
    for name, a in _crops():  # per image, the set's loss (f1's: lambda 0.001) is at most its full-resolution mode's,
        n = a.shape[0] * a.shape[1]  # which costs one byte more than f1 alone (the mode)

        def loss(x):
            return 0.001 * 255 ** 2 * 10 ** (-x["psnr"] / 10) + 8 * x["bytes"] / n

        assert loss(per[(ms, name)]) <= loss(per[("semarc-f1", name)]) + 8 / n + 1e-9
    assert set(r["speed"][ms]["images_per_s"]) == {"semarc-encode", "semarc-encode-noverify", "semarc-decode"}
    assert "| semarc-f1+semarc-f1@1/2 |" in (tmp_path / "kodak.md").read_text()


def test_a_stopped_bench_resumes_with_nothing_measured_twice_or_lost(tmp_path, monkeypatch):
    """Each image's measurements go to ``kodak.progress.jsonl`` as they finish:
    the same command, run again after a stop, measures only what is missing and
    reports what an uninterrupted run reports; a torn last line is measured
    again; another configuration in the same folder is refused; the journal
    is gone once the report is written."""
    kw = dict(baselines=["jpeg"], points=["semarc-f1"], images=_crops(), which=("psnr", "lpips"), speed_reps=0,
              plot=False, latent_steps=(0, 2))
    whole = kodak.run(str(tmp_path / "whole"), **kw)
    assert not (tmp_path / "whole" / "kodak.progress.jsonl").exists() and "resumed" not in whole

    real_match, calls = kodak.match_size, []

    def stop_on_second(*a, **k):  # one call per image and variant (one classical codec)
        calls.append(a[2])
        if len(calls) == 2:  # the first variant's second image
            raise KeyboardInterrupt
        return real_match(*a, **k)

    monkeypatch.setattr(kodak, "match_size", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        kodak.run(str(tmp_path / "part"), **kw)
    journal = tmp_path / "part" / "kodak.progress.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["item"] == "astronaut"
    assert not (tmp_path / "part" / "kodak.json").exists()

    with pytest.raises(SystemExit, match="another configuration .*metrics"):
        kodak.run(str(tmp_path / "part"), **{**kw, "which": ("psnr", "lpips", "dists")})
    with open(journal, "a") as f:  # a record cut off mid-write
        f.write('{"unit": "semarc-f1", "item": "chel')

    counted = []
    monkeypatch.setattr(kodak, "match_size", lambda *a, **k: counted.append(a[2]) or real_match(*a, **k))
    resumed = kodak.run(str(tmp_path / "part"), **kw)
    assert len(counted) == 3  # four units, one measured before the stop
    assert resumed["resumed"] == 1 and not journal.exists()

    def strip(r):
        return [{k: v for k, v in x.items() if k != "encode_s"} for x in r]

    assert strip(resumed["per_image"]) == strip(whole["per_image"])
    assert strip(resumed["rows"]) == strip(whole["rows"])
