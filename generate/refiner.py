"""Generative refinement at decode: a diffusion image-to-image model redraws
the learned codec's reconstruction, conditioned on the record's caption (as
in Murai et al., VCIP 2024: the decoded image is refined by a generative
model guided by the caption).

Any diffusers image-to-image checkpoint, by hub id or local folder, loaded
with ``diffusers.AutoPipelineForImage2Image`` (the ``refine`` extra). The
archive's exact content is the codec's reconstruction; refinement is a
decode-time choice and is not stored. It is reproducible: each record's noise
comes from its own generator, seeded from the record's key and the job's
seed, so a record refines the same way whatever batch it lands in (up to the
floating-point behaviour of the device).

Sizes: a diffusion model needs sides divisible by its latent stride (the VAE
scale factor times the UNet's downsampling), so each image is padded
(reflect) to the next multiple, refined, and cropped back: the output has the
source's size. Images are batched by padded size.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np


class RefinerError(RuntimeError):
    pass


@dataclass
class RefinerConfig:
    model: str
    strength: float = 0.3        # how much of the diffusion schedule is re-run (0..1]
    steps: int = 20              # inference steps of the full schedule (strength x steps are run)
    guidance: float = 5.0        # classifier-free guidance scale
    seed: int = 0
    device: str = "auto"         # "auto": cuda if available, else cpu
    dtype: str = "auto"          # "auto": float16 on cuda, float32 on cpu

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("device")
        d.pop("dtype")
        return {"kind": "refiner", **d}


def record_seed(key: str, seed: int) -> int:
    """A record's noise seed: from its key and the job's seed (batch-independent)."""
    h = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class Refiner:
    def __init__(self, config: RefinerConfig) -> None:
        try:
            import torch
            from diffusers import AutoPipelineForImage2Image
            from diffusers.utils import logging as dlog
        except ImportError as e:
            raise RefinerError(f"refinement needs diffusers: pip install 'semarc[refine]' ({e})") from e
        if not 0 < config.strength <= 1:
            raise RefinerError(f"refine strength must be in (0, 1], not {config.strength}")
        if config.steps < 1 or int(config.steps * config.strength) < 1:
            raise RefinerError(f"refinement runs strength x steps = {config.strength} x {config.steps} "
                               f"diffusion steps: fewer than one")
        dlog.disable_progress_bar()
        self.config = config
        self.device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = config.dtype if config.dtype != "auto" else ("float16" if self.device.startswith("cuda")
                                                             else "float32")
        self.torch_dtype = getattr(torch, dtype)
        try:
            try:  # diffusers >= 0.36 names it dtype; older releases torch_dtype
                pipe = AutoPipelineForImage2Image.from_pretrained(config.model, dtype=self.torch_dtype)
            except TypeError:
                pipe = AutoPipelineForImage2Image.from_pretrained(config.model, torch_dtype=self.torch_dtype)
        except Exception as e:
            raise RefinerError(f"cannot load the refiner {config.model!r}: {type(e).__name__}: {e}") from e
        if hasattr(pipe, "safety_checker"):
            pipe.safety_checker = None  # an archive restores what was stored, it does not censor it
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device, self.torch_dtype)
        vae = getattr(pipe, "vae_scale_factor", 8)
        unet = getattr(pipe, "unet", None)
        down = 2 ** (len(unet.config.block_out_channels) - 1) if unet is not None else 8
        self.multiple = int(vae * down)

    def describe(self) -> dict:
        return {**self.config.identity(), "pipeline": type(self.pipe).__name__, "device": self.device,
                "dtype": str(self.torch_dtype).replace("torch.", "")}

    def _pad(self, a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        ph, pw = -h % self.multiple, -w % self.multiple
        if not (ph or pw):
            return a
        mode = "reflect" if h > ph and w > pw else "edge"  # reflect needs a side longer than its pad
        return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode=mode)

    def refine(self, images: list[np.ndarray], captions: list[str | None], keys: list[str]) -> list[np.ndarray]:
        """uint8 HxWx3 images -> refined uint8 images of the same sizes; an
        image without a caption is refined with an empty prompt."""
        import torch
        from PIL import Image

        out: list = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        padded = [self._pad(np.asarray(a, dtype=np.uint8)) for a in images]
        for i, p in enumerate(padded):
            groups.setdefault(p.shape, []).append(i)
        gen_device = "cpu" if self.device == "mps" else self.device
        for shape, idx in groups.items():
            gens = [torch.Generator(gen_device).manual_seed(record_seed(keys[i], self.config.seed)) for i in idx]
            res = self.pipe(prompt=[captions[i] or "" for i in idx], image=[Image.fromarray(padded[i]) for i in idx],
                            strength=self.config.strength, num_inference_steps=self.config.steps,
                            guidance_scale=self.config.guidance, generator=gens, output_type="np",
                            height=shape[0], width=shape[1]).images
            for i, r in zip(idx, res):
                h, w = images[i].shape[:2]
                out[i] = np.clip(np.rint(np.asarray(r[:h, :w, :3], dtype=np.float64) * 255), 0, 255).astype(np.uint8)
        return out
