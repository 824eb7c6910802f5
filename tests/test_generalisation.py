"""``semarc bench generalisation``: two bench results' margins, their
difference and bootstrap intervals, from the results' per-image rows."""

import json

import numpy as np
import pytest

from semarc.bench import generalisation, kodak
from semarc.cli import run as cli


def result(tmp_path, name, semarc, codecs, point="p", dataset="d", missed=None):
    """A ``semarc bench kodak`` result as the bench writes it: per-image rows
    (semarc's and each codec's (PSNR, LPIPS-Alex) per image; ``missed``: per
    codec, the images where none of its files was as small as semarc's) and
    mean rows."""
    missed = missed or {}
    per_image = []
    for codec, values in [("semarc", semarc)] + list(codecs.items()):
        per_image += [{"codec": codec, "point": point, "image": f"i{k:02d}", "bpp": 0.08, "psnr": p, "lpips": lp,
                       "reached": k not in missed.get(codec, ())} for k, (p, lp) in enumerate(values)]
    rows = [kodak._mean_row(c, point, [x for x in per_image if x["codec"] == c]) for c in ["semarc", *codecs]]
    r = {"images": [f"i{k:02d}" for k in range(len(semarc))], "rows": rows, "per_image": per_image,
         "points": {point: {}}, "min_reached": len(semarc), "dataset": dataset}
    (tmp_path / name).mkdir()
    (tmp_path / name / "kodak.json").write_text(json.dumps(r))
    return tmp_path / name


def test_margins_are_the_reports_and_identical_sets_generalise(tmp_path):
    rng = np.random.default_rng(1)
    sem = [(float(p), float(lp)) for p, lp in zip(rng.uniform(24, 30, 12), rng.uniform(0.1, 0.2, 12))]
    codecs = {"avif": [(p + 1.0, lp * 2.5) for p, lp in sem], "heif": [(p + 0.5, lp * 2.2) for p, lp in sem]}
    a = generalisation.load(result(tmp_path, "a", sem, codecs))
    rep = generalisation.compare(a, generalisation.load(result(tmp_path, "b", sem, codecs)), draws=2000)
    first = rep["comparisons"][0]
    # the first comparison is each report's summary codec, and its margins are the report's
    best = kodak.best_classical(a, "p")
    sem_row = next(x for x in a["rows"] if x["codec"] == "semarc")
    lp, gap = kodak.margins(sem_row, best)
    assert first["codec_a"] == first["codec_b"] == best["codec"] == "avif"
    assert first["lpips_reduction_a"] == pytest.approx(100 * lp, abs=0.01) == pytest.approx(60.0, abs=0.01)
    assert first["psnr_gap_a"] == pytest.approx(gap, abs=0.002) == pytest.approx(-1.0)
    assert [c["comparison"] for c in rep["comparisons"]] == ["each set's best", "avif", "heif"]
    for c in rep["comparisons"]:
        assert c["lpips_reduction_diff"] == 0 and c["psnr_gap_diff"] == 0 and c["within"]
        lo, hi = c["lpips_reduction_diff_95"]
        assert lo < 0 < hi or lo == hi == 0
    # every image's margin is the same: no draw can move it
    assert first["lpips_reduction_a_95"] == [60.0, 60.0] and first["psnr_gap_a_95"] == [-1.0, -1.0]


def test_differences_beyond_the_bounds_and_intervals_that_narrow_with_more_images(tmp_path):
    rng = np.random.default_rng(2)

    def sets(n, factor):
        sem = [(25.0, float(lp)) for lp in rng.uniform(0.1, 0.3, n)]
        spread = rng.uniform(1.8, 3.2, n)  # per-image margins that vary
        return sem, {"avif": [(26.0, lp * f * factor) for (_, lp), f in zip(sem, spread)]}

    a = result(tmp_path, "a", *sets(10, 1.0))
    b = result(tmp_path, "b", *sets(10, 0.8))
    rep = generalisation.compare(generalisation.load(a), generalisation.load(b), draws=2000, seed=3)
    c = rep["comparisons"][0]
    assert c["lpips_reduction_a"] > c["lpips_reduction_b"] + 3 and not c["within"]
    lo, hi = c["lpips_reduction_diff_95"]
    assert lo < c["lpips_reduction_diff"] < hi
    again = generalisation.compare(generalisation.load(a), generalisation.load(b), draws=2000, seed=3)
    assert again == rep  # seeded: the same intervals
    wide = hi - lo
    a4, b4 = result(tmp_path, "a4", *sets(160, 1.0)), result(tmp_path, "b4", *sets(160, 0.8))
    c4 = generalisation.compare(generalisation.load(a4), generalisation.load(b4), draws=2000)["comparisons"][0]
    assert c4["lpips_reduction_diff_95"][1] - c4["lpips_reduction_diff_95"][0] < wide / 2
    assert c4["lpips_reduction_diff_95"][0] > 0  # 160 images a set: the difference is resolved


def test_cli_writes_the_report_and_refuses_what_it_cannot_compare(tmp_path):
    sem = [(25.0, 0.2), (27.0, 0.1), (26.0, 0.15)]
    a = result(tmp_path, "a", sem, {"avif": [(26.0, 0.4), (28.0, 0.3), (27.0, 0.3)]}, point="q2-search100")
    b = result(tmp_path, "b", sem, {"avif": [(26.5, 0.4), (28.5, 0.3), (27.5, 0.3)], "jpeg": [(20, 0.9)] * 3},
               point="q2-search100", dataset="Kodak")
    out = tmp_path / "out"
    assert cli(["bench", "generalisation", "--out", str(out), "--results", f"{a},{b / 'kodak.json'}",
                 "--draws", "500"]) == 0
    rep = json.loads((out / "generalisation.json").read_text())
    assert [c["codec_a"] for c in rep["comparisons"]] == ["avif", "avif"]  # jpeg: measured on one set only
    assert rep["comparisons"][0]["psnr_gap_diff"] == pytest.approx(0.5) and not rep["comparisons"][0]["within"]
    md = (out / "generalisation.md").read_text()
    assert "Command: `semarc " in md and "| avif (each set's best) | 3/3 / 3/3 |" in md
    # where no codec reaches semarc's bytes on enough images, the one reaching them on most, as the report does
    c = result(tmp_path, "c", sem, {"avif": [(30.0, 0.4)] * 3, "heif": [(26.0, 0.4)] * 3},
               missed={"avif": (0, 1), "heif": (0,)})
    assert kodak.best_classical(generalisation.load(c), "p") is None
    rep = generalisation.compare(generalisation.load(c), generalisation.load(c), draws=200)
    assert rep["comparisons"][0]["codec_a"] == "heif" and rep["comparisons"][0]["reached_a"] == 2
    with pytest.raises(SystemExit, match="two bench results"):
        generalisation.run(out, [str(a)])
    with pytest.raises(SystemExit, match="no point 'other'"):
        generalisation.run(out, [str(a), str(b)], points=["other"])
    with pytest.raises(SystemExit, match="no bench result"):
        generalisation.run(out, [str(a), str(tmp_path / "missing")])
