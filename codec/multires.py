"""Adaptive resolution: one image codec made of several *modes*, each a codec
point and a scale, chosen per image by the encoder.

A mode set is written ``POINT[@NUM/DEN]+POINT@NUM/DEN+...``, for example
``semarc-h05s+semarc-h10s@3/4+semarc-h10s@1/2``: code each image with
``semarc-h05s`` at full resolution, or downscale it to 3/4 or 1/2 of its size
and code it with ``semarc-h10s``. At low rates a better point at a lower
resolution often costs fewer bytes than a weaker point at full resolution for
the same quality (smooth images above all), which is why AVIF at half
resolution is the strongest classical codec at these rates.

The encoder codes the image in every mode, decodes each candidate as a decoder
would, scales it back to the source size and keeps the one with the lowest
loss ``lambda * 255^2 * MSE + lpips_weight * LPIPS-Alex + bpp``
(``search_loss.SearchLoss``; by default the first mode's training loss), where
bpp counts the whole image section. The choice is the encoder's: any decoder
of the mode set decodes every choice.

Payload (docs/format.md, "Adaptive resolution")::

    varint(mode) varint(width) varint(height) strings

``width`` and ``height`` are the source size; the mode's point codes the image
resized to ``max(1, (width * NUM + DEN // 2) // DEN)`` by the same for the
height, and its strings follow as they would in that point's own payload. The
check is the mode's point's (its latent symbols). Downscaling and upscaling
use Pillow's Lanczos filter on 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .imageio import MAX_PIXELS
from .latent_codecs import ImageCodecError
from .varint import read_varint, write_varint

RESAMPLE = "Pillow Lanczos, 8-bit RGB (Image.Resampling.LANCZOS)"
MAX_MODES = 16
_PART = re.compile(r"^(?P<point>[^@+]+?)(?:@(?P<num>[0-9]+)/(?P<den>[0-9]+))?$")


def is_mode_set(codec: str) -> bool:
    """Whether ``--codec`` names a mode set (``A+B@1/2`` or a name in
    ``zoo.MODE_SETS``), not a single point."""
    from . import zoo

    return "+" in codec or any(m.name == codec for m in zoo.MODE_SETS)


@dataclass(frozen=True)
class Mode:
    point: str          # a codec name (zoo name, checkpoint id, path)
    scale: Fraction     # 0 < scale <= 1

    def coded_size(self, width: int, height: int) -> tuple[int, int]:
        n, d = self.scale.numerator, self.scale.denominator
        return max(1, (width * n + d // 2) // d), max(1, (height * n + d // 2) // d)

    def spelling(self) -> str:
        return self.point if self.scale == 1 else f"{self.point}@{self.scale.numerator}/{self.scale.denominator}"


def parse(spec: str) -> list[Mode]:
    """``A+B@3/4+...`` -> modes. Refuses a malformed spelling, a scale outside
    (0, 1], a repeated mode, and more than ``MAX_MODES`` modes."""
    parts = spec.split("+")
    if not 2 <= len(parts) <= MAX_MODES:
        raise ValueError(f"a mode set has 2 to {MAX_MODES} modes joined by '+', got {spec!r}")
    modes = []
    for p in parts:
        m = _PART.match(p.strip())
        if not m:
            raise ValueError(f"mode {p!r} of {spec!r}: expected POINT or POINT@NUM/DEN")
        scale = Fraction(1) if m["num"] is None else None
        if scale is None:
            num, den = int(m["num"]), int(m["den"])
            if not (0 < num <= den <= 64):
                raise ValueError(f"mode {p!r}: the scale NUM/DEN needs 0 < NUM <= DEN <= 64")
            scale = Fraction(num, den)
        modes.append(Mode(m["point"], scale))
    if len(set(modes)) != len(modes):
        raise ValueError(f"{spec!r} repeats a mode")
    return modes


def spelling(modes: list[Mode]) -> str:
    return "+".join(m.spelling() for m in modes)


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if a.shape[1] == width and a.shape[0] == height:
        return a
    return np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.LANCZOS))


class MultiResCoder:
    """The image coder of a mode set (``--codec A+B@3/4+...``), with
    ``ImageCoder``'s interface. Each mode's point loads once however many
    modes share it. ``decision_loss``: what the choice minimises (default: the
    first mode's training loss). ``latent_steps``/``latent_loss``: the mode is
    chosen by plain encodes, then the image is coded again in that mode with a
    latent search (by default against the decision loss): the cost of one
    search, not one per mode."""

    text_guided = False

    def __init__(self, spec: str, device: str = "cpu", zoo_pretrained: bool = True, latent_steps: int = 0,
                 latent_loss=None, decision_loss=None) -> None:
        from . import zoo
        from .image import ImageCoder, training_loss
        from .search_loss import SearchLoss

        # archives record checkpoint ids, never zoo names (codec/zoo.py)
        self.modes = parse(zoo.checkpoint_id(spec))
        self.spec = spelling(self.modes)
        self.device = device
        self._coders: dict[str, ImageCoder] = {}
        for m in self.modes:
            if m.point not in self._coders:
                c = ImageCoder(m.point, device=device, zoo_pretrained=zoo_pretrained)
                if c.text_guided or not c.arch.exact:
                    raise ValueError(f"mode {m.spelling()}: a mode set takes semarc's own exact points, "
                                     f"not {c.model.arch}")
                self._coders[m.point] = c
        first = self._coders[self.modes[0].point]
        if decision_loss is None:
            decision_loss = training_loss(first.model)
        elif not isinstance(decision_loss, SearchLoss):
            decision_loss = SearchLoss.parse(decision_loss)
        self.decision_loss = decision_loss
        self.latent_steps, self.latent_loss = 0, None
        if latent_steps:
            loss = decision_loss if latent_loss is None else latent_loss
            for c in self._coders.values():
                c._set_latent_search(int(latent_steps), loss)
            self.latent_steps, self.latent_loss = int(latent_steps), first.latent_loss
        self.model = first.model  # the first mode's point (what a report names as the set's base)
        self.stride = first.stride

    def coder(self, mode: int):
        return self._coders[self.modes[mode].point]

    def describe(self) -> dict:
        """The profile a shard records: each mode's point's profile and scale;
        the fingerprint covers every point's fingerprint, the scales and the
        resampling."""
        modes = [{"scale": f"{m.scale.numerator}/{m.scale.denominator}"} | self._coders[m.point].describe()
                 for m in self.modes]
        digest = hashlib.sha256(json.dumps({"resample": RESAMPLE, "modes": [
            [d["fingerprint"], d["scale"]] for d in modes]}, sort_keys=True).encode()).hexdigest()
        return {"kind": "image", "codec": self.spec, "arch": "multires", "modes": modes, "resample": RESAMPLE,
                "check": "the mode's point's check", "fingerprint": digest}

    # -- encode -------------------------------------------------------------------
    def _loss(self, ref: np.ndarray, img: np.ndarray, nbytes: int, scorer) -> float:
        """The decision loss of ``img`` against ``ref``; ``scorer``: a
        ``metrics.Scorer`` of ``ref`` (its LPIPS features computed once per
        image), or None when the loss has no LPIPS term."""
        mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
        loss = self.decision_loss.lmbda * mse + 8.0 * nbytes / (ref.shape[0] * ref.shape[1])
        if self.decision_loss.lpips_weight > 0:
            loss += self.decision_loss.lpips_weight * scorer(img)["lpips"]
        return loss

    def encode_batch(self, arrays: list[np.ndarray], verify: bool = True, texts=None) -> list:
        """Code HxWx3 uint8 arrays, each in the mode of lowest loss (module
        docstring). ``texts`` is accepted for ``ImageCoder``'s interface and
        ignored (no mode is text-guided)."""
        from .. import metrics
        from . import record

        for i, a in enumerate(arrays):  # before resizing: Pillow would fail on them with another error
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ImageCodecError(f"image {i}: expected HxWx3 uint8, got {a.shape} {a.dtype}")
        best: list[tuple[float, int, CodedImage] | None] = [None] * len(arrays)
        scorers = [metrics.Scorer(a, ("lpips",)) if self.decision_loss.lpips_weight > 0 else None for a in arrays]
        searches = {p: c.arch.search for p, c in self._coders.items()}
        try:  # with a latent search, the mode is chosen by plain encodes, then searched alone (below)
            for c in self._coders.values():
                c.arch.search = None
            for k, m in enumerate(self.modes):
                coded, backs = self._code(k, arrays, verify)
                for i, (a, x, back) in enumerate(zip(arrays, coded, backs)):
                    loss = self._loss(a, back, len(record.pack_image(x.payload, x.check)), scorers[i])
                    if best[i] is None or loss < best[i][0]:
                        best[i] = (loss, k, x)
        finally:
            for p, c in self._coders.items():
                c.arch.search = searches[p]
        out = [b[2] for b in best]  # type: ignore[index]
        if self.latent_steps:
            for k in sorted({b[1] for b in best}):  # type: ignore[index]
                idx = [i for i, b in enumerate(best) if b[1] == k]  # type: ignore[index]
                for i, x in zip(idx, self._code(k, [arrays[i] for i in idx], verify)[0]):
                    out[i] = x
        return out

    def _code(self, k: int, arrays: list[np.ndarray], verify: bool) -> tuple[list, list[np.ndarray]]:
        """Code ``arrays`` in mode ``k`` (framed as the set's payloads) and
        decode the bytes back to the source size, as a decoder would."""
        from .image import CodedImage

        m, c = self.modes[k], self.coder(k)
        coded = c.encode_batch([_resize(a, *m.coded_size(a.shape[1], a.shape[0])) for a in arrays], verify=verify)
        backs = c.decode_batch([(x.payload, x.check) for x in coded])
        out, full = [], []
        for a, x, back in zip(arrays, coded, backs):
            if isinstance(back, Exception):
                raise ImageCodecError(f"mode {m.spelling()} did not decode its own bytes: {back}")
            out.append(CodedImage(self._frame(k, a.shape[1], a.shape[0], x.payload), x.check, a.shape[1], a.shape[0]))
            full.append(_resize(back, a.shape[1], a.shape[0]))
        return out, full

    @staticmethod
    def _frame(mode: int, width: int, height: int, inner: bytes) -> bytes:
        """The mode's point's payload (coded size, strings) -> the set's
        payload (mode, source size, strings)."""
        _, pos = read_varint(inner, 0)
        _, pos = read_varint(inner, pos)
        return write_varint(mode) + write_varint(width) + write_varint(height) + inner[pos:]

    # -- decode -------------------------------------------------------------------
    def mode_of(self, payload: bytes) -> tuple[int, int, int, bytes]:
        """(mode, width, height, the mode's point's payload) of an untrusted
        payload; raises ``ImageCodecError`` on anything the encoder never writes."""
        try:
            mode, pos = read_varint(payload, 0)
            w, pos = read_varint(payload, pos)
            h, pos = read_varint(payload, pos)
        except ValueError as e:
            raise ImageCodecError(f"truncated image header: {e}") from e
        if mode >= len(self.modes):
            raise ImageCodecError(f"image names mode {mode}; the mode set {self.spec} has {len(self.modes)} "
                                  f"(corrupt bytes?)")
        if not (0 < w <= 1 << 20 and 0 < h <= 1 << 20 and w * h <= MAX_PIXELS):
            raise ImageCodecError(f"image size {w}x{h} in the header is outside what the encoder writes "
                                  f"(1..{MAX_PIXELS} pixels; corrupt bytes?)")
        cw, ch = self.modes[mode].coded_size(w, h)
        return mode, w, h, write_varint(cw) + write_varint(ch) + payload[pos:]

    def decode_batch(self, items: list[tuple[bytes, int]]) -> list:
        """``(payload, check)`` pairs -> HxWx3 uint8 arrays of the source size;
        a corrupt item yields an ``ImageCodecError`` in its place."""
        out: list = [None] * len(items)
        by_mode: dict[int, list[tuple[int, int, int, bytes, int]]] = {}
        for i, (payload, check) in enumerate(items):
            try:
                mode, w, h, inner = self.mode_of(payload)
                by_mode.setdefault(mode, []).append((i, w, h, inner, check))
            except ImageCodecError as e:
                out[i] = e
        for mode, members in by_mode.items():
            backs = self.coder(mode).decode_batch([(inner, check) for _, _, _, inner, check in members])
            for (i, w, h, _, _), back in zip(members, backs):
                out[i] = back if isinstance(back, Exception) else _resize(back, w, h)
        return out
