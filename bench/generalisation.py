"""``semarc bench generalisation``: whether a point's margins over classical
codecs carry from one image set to another, e.g. from the corpus's
validation split to Kodak, with the sampling uncertainty of each figure.

It reads two ``semarc bench kodak`` results (their ``kodak.json``, or the
folders holding them) and, for one point in each, compares:

- each set's best classical codec by PSNR among those reaching semarc's
  bytes on enough images, as each report's summary picks it (where none
  does, the one reaching them on most images; ``kodak.compared_classical``):
  the generalisation criterion;
- then every classical codec that both runs measured, the same on both sets.

For each comparison it gives, per set, the LPIPS-Alex reduction (the report's
margin, from the means over the images) and the PSNR gap (semarc minus the
codec), their differences between the sets, and whether the differences are
within the bounds (by default 3 points and 0.3 dB, as measured). Each figure
comes with a 95% bootstrap interval: the images of a set are drawn with
replacement (an image's semarc and classical rows together), the two sets
independently, the codec held as chosen on the whole set. Where a
difference's interval reaches both inside and beyond its bound, the sets are
too small to settle the criterion.

Results: ``OUT/generalisation.{json,md}``. Nothing is re-measured, so it runs
in a second on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DRAWS = 10000
MAX_POINTS = 3.0  # LPIPS reduction, percentage points
MAX_DB = 0.3      # PSNR gap, dB


def load(path: str | Path) -> dict:
    """A ``semarc bench kodak`` result: its ``kodak.json`` or the folder holding it."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "kodak.json"
    if not p.is_file():
        raise SystemExit(f"generalisation: no bench result at {path} (a kodak.json or its folder)")
    r = json.loads(p.read_text())
    if not r.get("per_image") or not r.get("points"):
        raise SystemExit(f"generalisation: {p} has no per-image rows")
    r["_path"] = str(p)
    return r


def _point(r: dict, name: str | None) -> str:
    names = list(r["points"])
    if name is None:
        if len(names) != 1:
            raise SystemExit(f"generalisation: {r['_path']} has points {names}: name one with --points")
        return names[0]
    if name not in names:
        raise SystemExit(f"generalisation: {r['_path']} has no point {name!r} (it has {names})")
    return name


def pairs(r: dict, point: str, codec: str) -> dict[str, np.ndarray]:
    """Per image, in a fixed order: semarc's and ``codec``'s LPIPS-Alex and PSNR."""
    rows = {(x["codec"], x["image"]): x for x in r["per_image"] if x["point"] == point}
    images = sorted(i for c, i in rows if c == "semarc")
    missing = [i for i in images if (codec, i) not in rows]
    if not images or missing:
        raise SystemExit(f"generalisation: {r['_path']}: {codec} has no row for {missing or 'any image'}")
    get = lambda c, k: np.array([rows[(c, i)][k] for i in images], dtype=np.float64)  # noqa: E731
    return {"s_lpips": get("semarc", "lpips"), "c_lpips": get(codec, "lpips"),
            "s_psnr": get("semarc", "psnr"), "c_psnr": get(codec, "psnr")}


def _stats(p: dict[str, np.ndarray], idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(LPIPS reduction in %, PSNR gap in dB) over the images, or over each row
    of image indices ``idx`` (one bootstrap draw per row)."""
    take = (lambda a: a) if idx is None else (lambda a: a[idx])  # noqa: E731
    s, c = take(p["s_lpips"]).sum(-1), take(p["c_lpips"]).sum(-1)
    return 100 * (c - s) / c, (take(p["s_psnr"]) - take(p["c_psnr"])).mean(-1)


def _interval(draws: np.ndarray) -> list[float]:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def compare(a: dict, b: dict, point_a: str | None = None, point_b: str | None = None, draws: int = DRAWS,
            seed: int = 0, max_points: float = MAX_POINTS, max_db: float = MAX_DB) -> dict:
    """The comparisons of the module's docstring between result ``a`` (e.g.
    the validation split) and ``b`` (e.g. Kodak)."""
    from semarc.bench import kodak

    if draws < 100:
        raise SystemExit("generalisation: --draws must be at least 100")
    pa, pb = _point(a, point_a), _point(b, point_b)
    best_a, best_b = kodak.compared_classical(a, pa), kodak.compared_classical(b, pb)
    if best_a is None or best_b is None:
        raise SystemExit("generalisation: a result has no classical codec (run the bench with --baselines)")
    codecs_a = {x["codec"] for x in a["per_image"] if x["point"] == pa} - {"semarc"}
    codecs_b = {x["codec"] for x in b["per_image"] if x["point"] == pb} - {"semarc"}
    plan = [("each set's best", best_a["codec"], best_b["codec"])]
    plan += [(c, c, c) for c in sorted(codecs_a & codecs_b)]
    rng = np.random.default_rng(seed)
    out = []
    for label, ca, cb in plan:
        xa, xb = pairs(a, pa, ca), pairs(b, pb, cb)
        reached = [sum(bool(x["reached"]) for x in r["per_image"] if x["point"] == p and x["codec"] == c)
                   for r, p, c in ((a, pa, ca), (b, pb, cb))]
        ia = rng.integers(0, len(xa["s_lpips"]), (draws, len(xa["s_lpips"])))
        ib = rng.integers(0, len(xb["s_lpips"]), (draws, len(xb["s_lpips"])))
        (ma, ga), (mb, gb) = _stats(xa), _stats(xb)
        (da, dga), (db, dgb) = _stats(xa, ia), _stats(xb, ib)
        out.append({
            "comparison": label, "codec_a": ca, "codec_b": cb,
            "images_a": len(xa["s_lpips"]), "images_b": len(xb["s_lpips"]),
            "reached_a": reached[0], "reached_b": reached[1],
            "lpips_reduction_a": round(float(ma), 3), "lpips_reduction_a_95": _interval(da),
            "lpips_reduction_b": round(float(mb), 3), "lpips_reduction_b_95": _interval(db),
            "lpips_reduction_diff": round(float(ma - mb), 3), "lpips_reduction_diff_95": _interval(da - db),
            "psnr_gap_a": round(float(ga), 3), "psnr_gap_a_95": _interval(dga),
            "psnr_gap_b": round(float(gb), 3), "psnr_gap_b_95": _interval(dgb),
            "psnr_gap_diff": round(float(ga - gb), 3), "psnr_gap_diff_95": _interval(dga - dgb),
            "within": bool(abs(ma - mb) <= max_points and abs(ga - gb) <= max_db),
        })
    return {"a": a["_path"], "b": b["_path"], "set_a": a.get("dataset", "Kodak"), "set_b": b.get("dataset", "Kodak"),
            "point_a": pa, "point_b": pb, "draws": draws, "seed": seed, "max_points": max_points,
            "max_db": max_db, "comparisons": out}


def markdown(rep: dict) -> str:
    iv = lambda v, d: f"[{v[0]:+.{d}f}, {v[1]:+.{d}f}]"  # noqa: E731
    lines = [f"# Generalisation: `{rep['point_a']}` on {rep['set_a']} against `{rep['point_b']}` on {rep['set_b']}",
             "", f"A: `{rep['a']}`; B: `{rep['b']}`.", "",
             f"LPIPS reduction: semarc's LPIPS-Alex below the codec's at semarc's bytes (means over the images, "
             f"positive = semarc better); PSNR gap: semarc minus the codec. In brackets, 95% bootstrap intervals "
             f"({rep['draws']} draws, seed {rep['seed']}: each set's images drawn with replacement, the sets "
             f"independently, the codec held). Within: both differences, as measured, within "
             f"{rep['max_points']:g} points and {rep['max_db']:g} dB. The first row compares each set's summary "
             f"codec: the best by PSNR among those reaching semarc's bytes on enough images (where none does, the "
             f"one reaching them on most); reached: on how many images a codec found a file at or below semarc's "
             f"bytes.", "",
             "| codec (A / B) | reached (A / B) | LPIPS reduction A | B | A - B (points) | PSNR gap A (dB) | B | "
             "A - B (dB) | within |", "| --- |" + " --- |" * 8]
    for c in rep["comparisons"]:
        codec = c["codec_a"] if c["codec_a"] == c["codec_b"] else f"{c['codec_a']} / {c['codec_b']}"
        if c["comparison"] != c["codec_a"]:
            codec = f"{codec} ({c['comparison']})"
        lines.append(
            f"| {codec} | {c['reached_a']}/{c['images_a']} / {c['reached_b']}/{c['images_b']} | "
            f"{c['lpips_reduction_a']:+.1f}% {iv(c['lpips_reduction_a_95'], 1)} | "
            f"{c['lpips_reduction_b']:+.1f}% {iv(c['lpips_reduction_b_95'], 1)} | "
            f"{c['lpips_reduction_diff']:+.1f} {iv(c['lpips_reduction_diff_95'], 1)} | "
            f"{c['psnr_gap_a']:+.2f} {iv(c['psnr_gap_a_95'], 2)} | {c['psnr_gap_b']:+.2f} {iv(c['psnr_gap_b_95'], 2)} | "
            f"{c['psnr_gap_diff']:+.2f} {iv(c['psnr_gap_diff_95'], 2)} | {'yes' if c['within'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run(out: str | Path, results: list[str], points: list[str] | None = None, draws: int = DRAWS,
        seed: int = 0, command: str | None = None) -> dict:
    if len(results) != 2:
        raise SystemExit("generalisation: --results takes two bench results, A,B (e.g. the validation split's, Kodak's)")
    if points is not None and len(points) not in (1, 2):
        raise SystemExit("generalisation: --points takes one point (in both results) or two (A's, B's)")
    pa, pb = (points * 2)[:2] if points else (None, None)
    rep = compare(load(results[0]), load(results[1]), pa, pb, draws=draws, seed=seed)
    rep["command"] = command
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generalisation.json").write_text(json.dumps(rep, indent=1) + "\n")
    md = markdown(rep)
    if command:
        md = md.replace("\n\n", f"\n\nCommand: `{command}`.\n\n", 1)
    (out / "generalisation.md").write_text(md)
    print(md)
    return rep
