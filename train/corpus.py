"""``semarc corpus DIR``: the training corpus, every real photograph that
installs here by name, with a fixed validation split that is not Kodak.

The curated list is ``train/corpus_sources.json`` (package data): sources, each
a list of items (a path, the SHA-256 of the file, a licence). Kinds of source:

* ``shared``: ``../shared/data/photos`` (the project's 49 open photos), read in
  place: the manifest points at them, nothing is copied.
* ``skimage``: scikit-image's bundled real photographs (the files in
  ``skimage/data``), converted to PNG under ``DIR/images/skimage``.
* ``deb``: Debian wallpaper packages, installed with ``apt-get`` when missing
  (as root; otherwise the command says what to run), converted to PNG under
  ``DIR/images/<source>``, the long side downscaled to ``max_side`` (2048) px
  with Lanczos when larger.
* ``dir``: any folder (tests, or photos of a user's own), converted like ``deb``.

Every file is checked against its SHA-256 before it is read; a file that
differs (another package version) is left out with a warning, as is a source
that is not installed. Exact duplicates (the same pixels) are dropped.

The split (``split_of``) depends on the curated list alone, not on what is
installed: within each source the items whose salted hash
``sha256("semarc-val/<source>/<sha256>")`` ranks lowest form the validation set,
``max(1, round(val_fraction * n))`` of them, so every source contributes,
whole images (never crops of a training image) are held out, and the split is
the same on every machine. Kodak is not in the corpus: it is for the final
report only.

``DIR/manifest.jsonl`` has one line per image: ``key``, ``uri`` (relative to
DIR, or absolute for images read in place), ``split`` (``train``/``val``),
``source``, ``origin`` (the file it came from), ``origin_sha256``, ``sha256``
(of the file at ``uri``), ``width``, ``height``, ``licence``.
``DIR/corpus.json`` sums it up per source and split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCES_FILE = Path(__file__).with_name("corpus_sources.json")
DEFAULT_DIR = Path.home() / ".cache" / "semarc" / "corpus"
RESERVED_PACKAGES = ("lomiri-wallpapers",)  # never installed nor read
SPLITS = ("train", "val")


def load_spec(path: str | os.PathLike | None = None) -> dict:
    spec = json.loads(Path(path or SOURCES_FILE).read_text())
    for s in spec["sources"]:
        if s.get("package", "").startswith(RESERVED_PACKAGES):
            raise ValueError(f"source {s['name']}: package {s['package']} is reserved and never used")
    return spec


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the split ----------------------------------------------------------------------------
def _rank_key(source: str, sha256: str) -> str:
    return hashlib.sha256(f"semarc-val/{source}/{sha256}".encode()).hexdigest()


def n_val(n: int, fraction: float) -> int:
    """Validation images of a source of ``n`` items: ``round(fraction * n)``,
    at least one (a source of one item stays in training)."""
    return 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))


def split_of(spec: dict) -> dict[tuple[str, str], str]:
    """``{(source, sha256): "train" | "val"}`` for every item of the curated
    list, stratified by source (see the module docstring)."""
    out = {}
    frac = float(spec.get("val_fraction", 0.15))
    for s in spec["sources"]:
        shas = [it["sha256"] for it in s["items"]]
        if len(set(shas)) != len(shas):
            raise ValueError(f"source {s['name']} lists a file twice")
        ranked = sorted(shas, key=lambda h: _rank_key(s["name"], h))
        k = n_val(len(ranked), frac)
        for i, h in enumerate(ranked):
            out[(s["name"], h)] = "val" if i < k else "train"
    return out


# -- where the files are --------------------------------------------------------------------
def _shared_photos_dir() -> Path | None:
    for cand in (Path.cwd() / "../shared/data/photos", Path(__file__).resolve().parents[1] / "../shared/data/photos"):
        if cand.is_dir():
            return cand.resolve()
    return None


def _skimage_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent


def _item_path(source: dict, item: dict, shared: Path | None) -> Path | None:
    kind = source["kind"]
    if kind == "shared":
        return shared / item["path"] if shared else None
    if kind == "skimage":
        d = _skimage_dir()
        return d / item["path"] if d else None
    if kind == "deb":
        return Path(item["path"])
    if kind == "dir":
        return Path(source["root"]) / item["path"]
    raise ValueError(f"source {source['name']}: unknown kind {kind!r}")


def _installed(package: str) -> bool:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return r.returncode == 0 and "install ok installed" in r.stdout


def install_packages(packages: list[str], log=print) -> list[str]:
    """Install the missing Debian packages with apt-get (as root); returns
    those that are still missing (with what to run to get them)."""
    for p in packages:
        if p.startswith(RESERVED_PACKAGES):
            raise ValueError(f"{p} is reserved and never used")
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        log(f"corpus: {', '.join(missing)} not installed and no apt-get here: those sources are left out")
        return missing
    if os.geteuid() != 0:
        log(f"corpus: not root, so not installing {', '.join(missing)}; to include them run "
            f"`sudo apt-get install --no-install-recommends {' '.join(missing)}` and rerun")
        return missing
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("corpus: " + " ".join(cmd))
    if subprocess.run(cmd, env=env).returncode != 0:
        log("corpus: apt-get install failed; running apt-get update once and retrying")
        subprocess.run(["apt-get", "update"], env=env)
        subprocess.run(cmd, env=env)
    return [p for p in missing if not _installed(p)]


# -- conversion -------------------------------------------------------------------------------
def fit_long_side(im, max_side: int | None):
    """The PIL image ``im`` downscaled (Lanczos, deterministic) so that its
    long side is at most ``max_side``; ``im`` itself when it already fits or
    ``max_side`` is None. The corpus, the validation split and training
    crops all downscale this way."""
    from PIL import Image

    w, h = im.size
    if not max_side or max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def convert(src: Path, dst: Path, max_side: int) -> tuple[int, int, str]:
    """``src`` as an 8-bit RGB PNG at ``dst``, the long side at most
    ``max_side`` (Lanczos, deterministic); returns (width, height, sha256 of
    the pixels)."""
    import numpy as np
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # the curated files are known (SHA-256 checked)
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = fit_long_side(im.convert("RGB"), max_side)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(f".tmp{os.getpid()}.png")
        im.save(tmp, "PNG")
        os.replace(tmp, dst)
        return im.size[0], im.size[1], _pixel_sha(np.asarray(im))


def _pixel_sha(a) -> str:
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()


def _pixels_of(path: Path) -> tuple[int, int, str]:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    return a.shape[1], a.shape[0], _pixel_sha(a)


def _item_key(source: dict, item: dict) -> str:
    name = item.get("name") or Path(item["path"]).stem
    if "/contents/images/" in item["path"]:
        name = item["path"].split("/contents/images/")[0].rsplit("/", 1)[-1]  # plasma: the wallpaper's name
    return f"{source['name']}/{name}"


def build(out_dir: str | os.PathLike, spec: dict | None = None, install: bool = True, log=print) -> dict:
    """Build the corpus into ``out_dir``; returns the summary written to
    ``corpus.json``."""
    spec = spec or load_spec()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = split_of(spec)
    max_side = int(spec.get("max_side", 2048))
    shared = _shared_photos_dir()
    if any(s["kind"] == "shared" for s in spec["sources"]) and shared is None:
        log("corpus: ../shared/data/photos not found (run from the project's root to include it)")
    packages = sorted({s["package"] for s in spec["sources"] if s["kind"] == "deb"})
    missing_pkgs = set(install_packages(packages, log) if install and packages else
                       [p for p in packages if not _installed(p)])
    previous = {}
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                previous[r["key"]] = r
    rows, seen, problems = [], {}, []
    for s in spec["sources"]:
        if s["kind"] == "deb" and s["package"] in missing_pkgs:
            problems.append(f"{s['name']}: package {s['package']} not installed")
            continue
        for it in s["items"]:
            key = _item_key(s, it)
            src = _item_path(s, it, shared)
            if src is None or not src.is_file():
                problems.append(f"{key}: {src or s['kind']} missing")
                continue
            digest = _sha256_file(src)
            if digest != it["sha256"]:
                problems.append(f"{key}: {src} has SHA-256 {digest[:16]}..., the list has {it['sha256'][:16]}...")
                continue
            if s["kind"] == "shared":  # read in place
                uri, target = str(src), src
                w, h, pix = _pixels_of(src)
            else:
                uri = f"images/{key}.png"
                target = out / uri
                old = previous.get(key)
                if (old and old.get("origin_sha256") == digest and target.is_file()
                        and old.get("pixels_sha256") and _sha256_file(target) == old.get("sha256")):
                    w, h, pix = old["width"], old["height"], old["pixels_sha256"]
                else:
                    w, h, pix = convert(src, target, max_side)
            if pix in seen:
                problems.append(f"{key}: the same pixels as {seen[pix]}, left out")
                if s["kind"] != "shared":
                    target.unlink(missing_ok=True)
                continue
            seen[pix] = key
            rows.append({"key": key, "uri": uri, "split": split[(s["name"], it["sha256"])], "source": s["name"],
                         "origin": str(src), "origin_sha256": digest, "sha256": _sha256_file(target),
                         "pixels_sha256": pix, "width": w, "height": h,
                         "licence": it.get("licence") or s.get("licence", "")})
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, manifest)
    counts = {}
    for r in rows:
        c = counts.setdefault(r["source"], {"train": 0, "val": 0})
        c[r["split"]] += 1
    summary = {"images": len(rows), "train": sum(r["split"] == "train" for r in rows),
               "val": sum(r["split"] == "val" for r in rows), "per_source": counts,
               "listed": sum(len(s["items"]) for s in spec["sources"]), "left_out": problems,
               "sources_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


# -- reading it -------------------------------------------------------------------------------
def read_manifest(corpus_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The manifest's rows (``split``: only that split), each with ``path``,
    the absolute file path."""
    d = Path(corpus_dir).expanduser()
    f = d / "manifest.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: build the corpus with `semarc corpus {corpus_dir}`")
    rows = []
    for line in f.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if split is not None and r["split"] != split:
            continue
        p = Path(r["uri"])
        r["path"] = str(p if p.is_absolute() else (d / p).resolve())
        rows.append(r)
    return rows


def split_digest(rows: list[dict]) -> str:
    """A run's identity for its data: SHA-256 over the rows' keys and file hashes."""
    return hashlib.sha256("".join(f"{r['key']} {r['sha256']}\n" for r in sorted(rows, key=lambda r: r["key"]))
                          .encode()).hexdigest()


def main(args) -> int:
    summary = build(args.dir, load_spec(args.sources) if args.sources else None, install=not args.no_install)
    for name, c in summary["per_source"].items():
        print(f"{name}\ttrain {c['train']}\tval {c['val']}")
    print(f"total\ttrain {summary['train']}\tval {summary['val']}\t({summary['images']} of {summary['listed']} listed)")
    for p in summary["left_out"]:
        print(f"left out: {p}", file=sys.stderr)
    print(f"manifest: {Path(args.dir).expanduser().resolve() / 'manifest.jsonl'}")
    return 0
