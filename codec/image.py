"""The image coder: RGB array <-> bytes with a learned (CompressAI) codec.

``ImageCoder.encode_batch(arrays)`` -> ``CodedImage`` per array: the payload
(source width and height as varints, then the entropy-coded latent strings)
and a 16-bit check of the latent *symbols*. ``decode_batch`` returns arrays of
the source size. Images are padded to the model's stride by edge
replication and cropped back; same-size images are batched together.

Exactness: the semarc factorized models decode their symbols with integer
CDF tables that ship inside the checkpoint (never recomputed from float
parameters at load), so the symbols are the same on every machine. At encode
time the symbols are entropy-decoded back and compared before the bytes are
accepted; at decode the symbol check is verified. CompressAI zoo models use
float-derived tables: their check covers the payload bytes only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import image_models
from .varint import read_varint, write_varint


class ImageCodecError(ValueError):
    pass


@dataclass
class CodedImage:
    payload: bytes
    check: int  # 16-bit check of the decoded symbols (or payload for zoo models)
    width: int
    height: int


def _pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    # replicate padding needs the pad to be smaller than the size for 'reflect'; replicate has no limit
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def check16(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFF


class ImageCoder:
    def __init__(self, codec: str = image_models.DEFAULT_CODEC, device: str = "cpu",
                 zoo_pretrained: bool = True) -> None:
        self.model = image_models.resolve(codec, zoo_pretrained=zoo_pretrained)
        self.device = device
        self.net = self.model.net.to(device).eval()
        self.stride = self.model.stride
        self._exact = self.model.arch == "factorized"

    def describe(self) -> dict:
        return {"kind": "image", "codec": self.model.name, "arch": self.model.arch, "config": self.model.config,
                "stride": self.stride, "check": "crc32&0xffff of int32 latent symbols" if self._exact
                else "crc32&0xffff of payload", "fingerprint": self.model.fingerprint}

    # -- symbols ----------------------------------------------------------------
    def _symbols(self, y_hat: torch.Tensor) -> torch.Tensor:
        eb = self.net.entropy_bottleneck
        med = eb._get_medians()
        return torch.round(y_hat - med).to(torch.int32)

    # -- encode -------------------------------------------------------------------
    @torch.inference_mode()
    def encode_batch(self, arrays: list[np.ndarray], verify: bool = True) -> list[CodedImage]:
        out: list[CodedImage | None] = [None] * len(arrays)
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ImageCodecError(f"image {i}: expected HxWx3 uint8, got {a.shape} {a.dtype}")
            h, w = a.shape[:2]
            groups.setdefault((-(-h // self.stride), -(-w // self.stride), h, w), []).append(i)
        for (_, _, h, w), idx in groups.items():
            x = torch.stack([torch.from_numpy(np.array(arrays[i])).permute(2, 0, 1) for i in idx]).float().div_(255.0)
            x = _pad(x.to(self.device), self.stride)
            if self._exact:
                y = self.net.g_a(x)
                strings = self.net.entropy_bottleneck.compress(y)
                shape = y.shape[-2:]
                sym = self._symbols(self.net.entropy_bottleneck.quantize(
                    y, "dequantize", self.net.entropy_bottleneck._get_medians()))
                if verify:
                    back = self._symbols(self.net.entropy_bottleneck.decompress(strings, shape))
                    if not torch.equal(back, sym):
                        raise ImageCodecError("entropy-coded symbols did not decode back at encode time")
                for j, i in enumerate(idx):
                    head = write_varint(w) + write_varint(h)
                    out[i] = CodedImage(head + strings[j], check16(sym[j].cpu().numpy().tobytes()), w, h)
            else:
                res = self.net.compress(x)
                for j, i in enumerate(idx):
                    parts = [s[j] for s in res["strings"]]
                    body = b"".join(write_varint(len(p)) + p for p in parts[:-1]) + parts[-1]
                    payload = write_varint(w) + write_varint(h) + body
                    out[i] = CodedImage(payload, check16(payload), w, h)
        return out  # type: ignore[return-value]

    # -- decode -------------------------------------------------------------------
    def _parse(self, payload: bytes) -> tuple[int, int, list[bytes]]:
        try:
            w, pos = read_varint(payload, 0)
            h, pos = read_varint(payload, pos)
        except ValueError as e:
            raise ImageCodecError(f"truncated image header: {e}") from e
        if not (0 < w <= 1 << 20 and 0 < h <= 1 << 20):
            raise ImageCodecError(f"implausible image size {w}x{h} in header (corrupt bytes?)")
        body = payload[pos:]
        if self._exact:
            return w, h, [body]
        parts, p = [], 0
        for _ in range(self._n_strings() - 1):
            ln, p = read_varint(body, p)
            parts.append(body[p:p + ln])
            p += ln
        parts.append(body[p:])
        return w, h, parts

    def _n_strings(self) -> int:
        if not hasattr(self, "_ns"):
            with torch.inference_mode():
                probe = self.net.compress(torch.zeros(1, 3, self.stride, self.stride, device=self.device))
            self._ns = len(probe["strings"])
        return self._ns

    @torch.inference_mode()
    def decode_batch(self, items: list[tuple[bytes, int]]) -> list[np.ndarray | Exception]:
        """``(payload, check)`` pairs -> HxWx3 uint8 arrays; a corrupt item yields
        an ``ImageCodecError`` in its place (the others still decode)."""
        out: list = [None] * len(items)
        groups: dict[tuple, list[tuple[int, list[bytes]]]] = {}
        for i, (payload, check) in enumerate(items):
            try:
                w, h, parts = self._parse(payload)
                if not self._exact and check16(payload) != check:
                    raise ImageCodecError("image payload check mismatch (corrupt bytes)")
                groups.setdefault((w, h), []).append((i, parts))
            except ImageCodecError as e:
                out[i] = e
        for (w, h), members in groups.items():
            hp, wp = -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride
            for i, parts in members:  # entropy decoding is per image; synthesis is batched below
                try:
                    if self._exact:
                        shape = (hp // self.stride, wp // self.stride)
                        y_hat = self.net.entropy_bottleneck.decompress([parts[0]], shape)
                        if check16(self._symbols(y_hat)[0].cpu().numpy().tobytes()) != items[i][1]:
                            raise ImageCodecError("decoded latent symbols fail their check: the bitstream is "
                                                  "corrupt or was made by different model tables")
                        out[i] = y_hat
                    else:
                        xh = self.net.decompress([[p] for p in parts], self._latent_shape(hp, wp))["x_hat"]
                        out[i] = ("x", xh)
                except ImageCodecError as e:
                    out[i] = e
                except Exception as e:  # the entropy decoder raises on garbage
                    out[i] = ImageCodecError(f"cannot decode image payload: {type(e).__name__}: {e}")
            ok = [i for i, _ in members if isinstance(out[i], torch.Tensor)]
            if ok:
                x_hat = self.net.g_s(torch.cat([out[i] for i in ok])).clamp_(0, 1)
                for j, i in enumerate(ok):
                    out[i] = ("x", x_hat[j:j + 1])
            for i, _ in members:
                if isinstance(out[i], tuple):
                    x = out[i][1][0, :, :h, :w]
                    out[i] = (x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
                              .permute(1, 2, 0).cpu().numpy().copy())
        return out

    def _latent_shape(self, hp: int, wp: int) -> tuple[int, int]:
        # zoo models: compressai's decompress takes the hyper-latent (z) shape, stride 64
        return (hp // 64, wp // 64)
