"""Image codec architectures, shipped rate points and checkpoint I/O.

Kept apart from the coder (``image.py``) the way CompressAI keeps its zoo,
entropy models and models apart:

* ``build(arch, config)`` makes an untrained network;
* ``load_checkpoint(path)`` loads a semarc checkpoint (``weights_only=True``);
* ``shipped_rate_points()`` lists the checkpoints of the zoo (``zoo.py``)
  shipped in ``codec/weights``;
* ``resolve(name)`` turns a ``--codec`` name into a loaded, ready network:
  a zoo name (``semarc-q1``) or its checkpoint id (``semarc-h05s``), a
  checkpoint path, or a CompressAI zoo model (``bmshj2018-factorized:1``;
  needs the hub, or ``pretrained=false`` for offline tests). A retired
  checkpoint id fails with an error that names it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).with_name("weights")
CKPT_FORMAT = "semarc-image-ckpt/1"


HYPER_INPUTS = ("latent", "rounded")
MEANS = ("none", "hyper")
MAX_SYNTHESIS_BLOCKS = 8
MAX_FINE_SYNTHESIS_BLOCKS = 4


def build(arch: str, config: dict) -> torch.nn.Module:
    """A fresh (untrained) network of a semarc architecture.

    ``config``: ``N``, ``M``; for ``text-checkerboard`` (``text_guided``)
    ``text_encoder``, the identity of its text encoder; and, for the hyperprior architectures,
    optionally ``hyper_input``: what the hyper-analysis ``h_a`` reads,
    ``latent`` (the default, CompressAI's ``|y|``) or ``rounded``
    (``|round(y)|``, the symbols the coder writes). It is encoder-side only:
    the decoder never runs ``h_a``, so both decode with the same code.
    For ``checkerboard``, optionally ``means``: ``none`` (the default: a
    zero-mean Gaussian, the latent itself rounded) or ``hyper`` (a mean per
    element predicted from the hyper-latent, as Minnen et al. 2018: the coded
    symbols are ``round(y - mean)`` and the decoder adds the mean back),
    ``synthesis_blocks``: K residual blocks added to the synthesis
    transform at 1/8 of the image's side, and ``fine_synthesis_blocks``: K
    more at 1/4 of it (``DeeperSynthesis``; 0 and 0, the defaults, are
    ScaleHyperprior's)."""
    from compressai.models import FactorizedPrior, ScaleHyperprior

    hyper_input = config.get("hyper_input", "latent")
    if hyper_input not in HYPER_INPUTS or (hyper_input != "latent" and arch == "factorized"):
        raise ValueError(f"hyper_input {hyper_input!r} does not fit architecture {arch!r}")
    means = config.get("means", "none")
    if means not in MEANS or (means != "none" and arch != "checkerboard"):
        raise ValueError(f"means {means!r} does not fit architecture {arch!r}")
    blocks = config.get("synthesis_blocks", 0)
    if not isinstance(blocks, int) or not 0 <= blocks <= MAX_SYNTHESIS_BLOCKS or (blocks and arch != "checkerboard"):
        raise ValueError(f"synthesis_blocks {blocks!r} does not fit architecture {arch!r} "
                         f"(checkerboard: 0 to {MAX_SYNTHESIS_BLOCKS})")
    fine = config.get("fine_synthesis_blocks", 0)
    if not isinstance(fine, int) or not 0 <= fine <= MAX_FINE_SYNTHESIS_BLOCKS or (fine and arch != "checkerboard"):
        raise ValueError(f"fine_synthesis_blocks {fine!r} does not fit architecture {arch!r} "
                         f"(checkerboard: 0 to {MAX_FINE_SYNTHESIS_BLOCKS})")
    if arch == "factorized":
        return FactorizedPrior(int(config["N"]), int(config["M"]))
    if arch == "hyperprior":
        # Balle et al. 2018 scale hyperprior: the same analysis/synthesis
        # transforms as "factorized" (so a factorized point can seed one), plus
        # hyper-transforms; decoded bit-exactly by ``image.ImageCoder``.
        net = ScaleHyperprior(int(config["N"]), int(config["M"]))
    elif arch == "checkerboard":
        net = _checkerboard_class()(int(config["N"]), int(config["M"]), means=means == "hyper")
        if blocks or fine:
            net.g_s = DeeperSynthesis(net.g_s, int(config["N"]), blocks, fine)
    elif arch == "text-checkerboard":
        from .text_guided import network_class

        if not isinstance(config.get("text_encoder"), dict):
            raise ValueError("a text-checkerboard config names its text encoder (text_encoders.TextEncoder.identity)")
        net = network_class()(int(config["N"]), int(config["M"]), int(config["text_encoder"]["dim"]))
    else:
        raise ValueError(f"unknown image codec architecture {arch!r}")
    net.hyper_input = hyper_input
    return net


class _ResidualBlock(torch.nn.Module):
    """``x + conv(lrelu(conv(x)))``, 3x3 convolutions; the second starts at
    zero, so a new block is the identity."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(n, n, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(n, n, 3, padding=1)
        torch.nn.init.zeros_(self.conv2.weight)
        torch.nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.nn.functional.leaky_relu(self.conv1(x)))


class DeeperSynthesis(torch.nn.Module):
    """ScaleHyperprior's synthesis transform with K residual blocks after its
    first upsampling (at 1/8 of the image's side, N channels), where they cost
    little: each adds about 3% of the transform's multiply-adds; and F more
    after its second (at 1/4 of the side, where texture is finer), each about
    12%. The base layers keep their names (``g_s.0`` to ``g_s.6``) and the
    blocks are ``g_s.blocks.*`` and ``g_s.fine.*``, so a point without blocks
    seeds one whole, and new blocks start as the identity: the grown network
    decodes the seed's pixels (``train.trainer.init_from``). The two kinds
    never stand in for each other: a block trained at one scale does not seed
    one at the other."""

    def __init__(self, base: torch.nn.Sequential, n: int, blocks: int, fine: int = 0) -> None:
        super().__init__()
        self._base = len(base)
        for i, layer in enumerate(base):
            self.add_module(str(i), layer)
        self.blocks = torch.nn.Sequential(*(_ResidualBlock(n) for _ in range(blocks)))
        self.fine = torch.nn.Sequential(*(_ResidualBlock(n) for _ in range(fine)))

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        layers = [getattr(self, str(i)) for i in range(self._base)]
        x = layers[1](layers[0](y_hat))
        x = self.blocks(x)
        x = self.fine(layers[3](layers[2](x)))
        for layer in layers[4:]:
            x = layer(x)
        return x


def analysis(net, x: torch.Tensor, text: tuple | None = None) -> torch.Tensor:
    """The latent of ``x``: ``g_a(x)``, or a text-guided network's analysis
    (``text_guided``) guided by ``text`` = (token embeddings (B, L, D),
    padding mask or None). The coder and the trainer both call this."""
    if hasattr(net, "analysis"):
        if text is None:
            raise ValueError("this codec point is text-guided: its encoder needs the captions")
        return net.analysis(x, *text)
    return net.g_a(x)


def hyper_analysis(net, y: torch.Tensor) -> torch.Tensor:
    """The hyper-latent ``z`` (before quantisation) of the latent ``y``:
    ``h_a`` reads ``|y|``, or ``|round(y)|`` for a network built with
    ``hyper_input: rounded`` (a straight-through gradient reaches ``y`` in
    training). A network with means also reads the signed value, through
    ``h_sign``, whose output joins ``h_a``'s first layer's: the sign is what a
    mean needs and ``|y|`` drops. Encoder-side only: the decoder never runs it."""
    if getattr(net, "hyper_input", "latent") == "rounded":
        y = y + (torch.round(y) - y).detach()
    if getattr(net, "h_sign", None) is None:
        return net.h_a(torch.abs(y))
    return net.h_a[1:](net.h_a[0](torch.abs(y)) + net.h_sign(y))


def latent_means(net, z_hat: torch.Tensor) -> torch.Tensor | None:
    """The latent's means predicted from the decoded hyper-latent (``means:
    hyper``; float32), or None for a zero-mean network. They are added to the
    decoded symbols, never used to pick a table: the symbols decode exactly
    whatever the means come to."""
    h_m = getattr(net, "h_m", None)
    return None if h_m is None else h_m(z_hat)


def quantize_latent(y: torch.Tensor, means: torch.Tensor | None,
                    ste: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(symbols, y_hat): the coded symbols ``round(y - means)`` (``round(y)``
    for a zero-mean network) and the latent the synthesis reads, the symbols
    plus the means. ``ste``: a straight-through gradient to ``y`` (training)."""
    r = y if means is None else y - means
    q = torch.round(r)
    if ste:
        q = r + (q - r).detach()
    return q, (q if means is None else q + means)


def latent_scales(net, z_hat: torch.Tensor, y_sym: torch.Tensor) -> torch.Tensor:
    """The latent's scales (training form): ``h_s(z_hat)``, refined by the
    anchors of the symbols ``y_sym`` for a checkerboard network."""
    s = net.h_s(z_hat)
    return net.scales(s, y_sym) if hasattr(net, "scales") else s


from .names import EXACT_ARCHS  # noqa: E402  (defined without torch for the command line)


@functools.lru_cache(maxsize=None)
def _checkerboard_class():
    from compressai.models import ScaleHyperprior

    class CheckerboardHyperprior(ScaleHyperprior):
        """The scale hyperprior plus a checkerboard context (He et al., CVPR 2021):
        the latent's *anchor* positions (``(row + col)`` even) are coded first
        with scales from the hyperprior; the other half is then coded with
        scales that also see the decoded anchors around it through a 5x5
        convolution (``context``). Both take the hyperprior's scale through
        ``entropy_params``, which predicts a log-scale correction (its last layer
        starts at zero, so an untrained context is the plain hyperprior). The
        transforms ``g_a``/``g_s`` and hyper-transforms are ScaleHyperprior's,
        so a ``hyperprior`` point seeds one whole (``codec/train.py``). Two
        passes, each fully parallel: decoding costs one more entropy-decoder
        call and a few convolutions on the latent grid."""

        def __init__(self, N: int, M: int, means: bool = False) -> None:
            super().__init__(N, M)
            nn = torch.nn
            self.context = nn.Conv2d(M, M, 5, padding=2)
            self.entropy_params = nn.Sequential(
                nn.Conv2d(2 * M, M, 1), nn.LeakyReLU(), nn.Conv2d(M, M, 1), nn.LeakyReLU(), nn.Conv2d(M, M, 1))
            nn.init.zeros_(self.entropy_params[-1].weight)
            nn.init.zeros_(self.entropy_params[-1].bias)
            self.h_sign = self.h_m = None
            if means:
                # ``means: hyper``: the signed latent reaches z (h_sign) and a mean per element comes back from
                # z_hat (h_m, shaped as h_s). Both start at zero here; seeding from a zero-mean point
                # (``train.trainer.init_from``) keeps the means at zero and starts h_sign small
                self.h_sign = nn.Conv2d(M, N, 3, padding=1)
                self.h_m = nn.Sequential(
                    nn.ConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
                    nn.ConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
                    nn.Conv2d(N, M, 3, padding=1))
                for layer in (self.h_sign, self.h_m[-1]):
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)

        @property
        def scale_min(self) -> float:
            """The Gaussian conditional's own lower bound on scales (0.11)."""
            return float(self.gaussian_conditional.lower_bound_scale.bound)

        @staticmethod
        def anchor_mask(like: torch.Tensor) -> torch.Tensor:
            """1 at anchor positions, broadcastable to ``like`` (N, C, H, W)."""
            h, w = like.shape[-2:]
            r = torch.arange(h, device=like.device).view(h, 1)
            c = torch.arange(w, device=like.device).view(1, w)
            return ((r + c) % 2 == 0).to(like.dtype).view(1, 1, h, w)

        def scales(self, hyper_scales: torch.Tensor, y_round: torch.Tensor) -> torch.Tensor:
            """The latent's scales from ``h_s(z_hat)`` and the rounded latent (only
            its anchors are read): at anchors with a zero context, elsewhere with
            the context of the anchors. (Training form; ``image.ImageCoder``
            computes the same in float64, sparsely, per pass.)"""
            base = hyper_scales.clamp(min=self.scale_min)
            m = self.anchor_mask(y_round)
            ctx = self.context(y_round * m) * (1 - m)
            return base * torch.exp(self.entropy_params(torch.cat([torch.log(base), ctx], 1)))

        def forward(self, x):
            """Training forward (CompressAI's noise proxy); the context reads
            the anchors' symbols (``round(y - mean)``), with a straight-through
            gradient."""
            y = self.g_a(x)
            z = hyper_analysis(self, y)
            z_hat, z_l = self.entropy_bottleneck(z)
            mu = latent_means(self, z_hat)
            y_sym, _ = quantize_latent(y, mu, ste=True)
            y_hat, y_l = self.gaussian_conditional(y, self.scales(self.h_s(z_hat), y_sym), means=mu)
            return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_l, "z": z_l}}

    return CheckerboardHyperprior


def state_dict_digest(state_dict: dict) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) in a fixed order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class LoadedModel:
    name: str
    arch: str
    config: dict
    net: torch.nn.Module
    fingerprint: str  # sha256 hex of the shipped state dict + architecture
    meta: dict = field(default_factory=dict)

    @property
    def stride(self) -> int:
        return int(getattr(self.net, "downsampling_factor", 64))


def _fingerprint(arch: str, config: dict, digest: str) -> str:
    desc = json.dumps({"arch": arch, "config": config, "weights": digest}, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, arch: str, config: dict, net: torch.nn.Module,
                    meta: dict | None = None, half: bool = True) -> str:
    """Write a shippable checkpoint: float weights in fp16 (``half``), entropy
    tables (integer CDFs) recomputed from the rounded weights so that the
    file is self-consistent. Returns the fingerprint."""
    net = net.cpu().eval()
    if half:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(p.half().float())
    net.update(force=True)
    sd = {}
    for k, v in net.state_dict().items():
        sd[k] = v.half() if (half and v.is_floating_point()) else v.clone()
    blob = {"format": CKPT_FORMAT, "arch": arch, "config": dict(config),
            "state_dict": sd, "meta": json.dumps(meta or {}, sort_keys=True)}
    buf = io.BytesIO()
    torch.save(blob, buf)
    Path(path).write_bytes(buf.getvalue())
    return _fingerprint(arch, dict(config), state_dict_digest(sd))


def load_checkpoint(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not a semarc image checkpoint ({CKPT_FORMAT})")
    sd = blob["state_dict"]
    fp = _fingerprint(blob["arch"], blob["config"], state_dict_digest(sd))
    net = build(blob["arch"], blob["config"])
    # the entropy models' likelihood floors (1e-9) are fp16 zeros in the file: keep the architecture's, so a
    # loaded model's likelihoods (training from it, not coding: the coder reads the CDF tables) never reach 0
    floors = {k: v.clone() for k, v in net.named_buffers() if k.endswith("likelihood_lower_bound.bound")}
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()})
    with torch.no_grad():
        for k, v in net.named_buffers():
            if k in floors:
                v.copy_(floors[k])
    net.eval()
    return LoadedModel(name=name or Path(path).stem, arch=blob["arch"], config=blob["config"],
                       net=net, fingerprint=fp, meta=json.loads(blob.get("meta") or "{}"))


def shipped_rate_points() -> dict[str, Path]:
    """The zoo's checkpoints in ``codec/weights`` (``<checkpoint id>.pt``), by
    checkpoint id, in the zoo's order. Other files there (a checkpoint a user
    trained and exported beside them) are not shipped points: name them by path."""
    from .zoo import ZOO

    return {e.checkpoint: WEIGHTS_DIR / f"{e.checkpoint}.pt" for e in ZOO
            if (WEIGHTS_DIR / f"{e.checkpoint}.pt").is_file()}


def zoo_model(spec: str, pretrained: bool = True) -> LoadedModel:
    """A CompressAI zoo model: ``arch:quality`` (e.g. ``cheng2020-attn:1``).

    ``pretrained=True`` downloads the published weights (needs the hub).
    The fingerprint covers the exact weights, so a bitstream made with one
    download cannot be decoded silently with different weights."""
    from compressai.zoo import image_models as zoo

    arch, _, q = spec.partition(":")
    if arch not in zoo:
        raise ValueError(f"unknown CompressAI zoo model {arch!r}; known: {sorted(zoo)}")
    quality = int(q or 1)
    net = zoo[arch](quality=quality, metric="mse", pretrained=pretrained).eval()
    net.update(force=True)
    sd = net.state_dict()
    fp = _fingerprint(f"zoo:{arch}", {"quality": quality}, state_dict_digest(sd))
    return LoadedModel(name=spec, arch=f"zoo:{arch}", config={"quality": quality}, net=net,
                       fingerprint=fp, meta={"pretrained": pretrained})


def resolve(name: str, zoo_pretrained: bool = True) -> LoadedModel:
    """``--codec NAME`` -> loaded model. NAME: a zoo name or a shipped
    checkpoint id (the model is named by its checkpoint id, which is what
    archives record), a path to a semarc checkpoint, or ``zoo:ARCH:QUALITY`` /
    ``ARCH:QUALITY`` for CompressAI. A retired checkpoint id raises
    ``zoo.RetiredCodecError`` naming it."""
    from . import zoo as semarc_zoo

    checkpoint = semarc_zoo.checkpoint_id(name)
    points = shipped_rate_points()
    if checkpoint in points:
        return load_checkpoint(points[checkpoint], name=checkpoint)
    if name.endswith(".pt") and Path(name).exists():
        return load_checkpoint(name)
    spec = name[4:] if name.startswith("zoo:") else name
    try:
        from compressai.zoo import image_models as zoo
    except ImportError as e:  # pragma: no cover - compressai is a core dependency
        raise RuntimeError("compressai is not installed; see docs/install.md") from e
    if spec.partition(":")[0] in zoo:
        return zoo_model(spec, pretrained=zoo_pretrained)
    raise ValueError(f"unknown codec {name!r}; shipped: {', '.join(semarc_zoo.names())} (semarc codecs); "
                     f"or a checkpoint path, or a CompressAI zoo name such as zoo:cheng2020-attn:1")


from .names import DEFAULT_CODEC  # noqa: E402  (no torch needed for the name)
