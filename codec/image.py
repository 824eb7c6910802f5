"""The image coder: RGB array <-> bytes with a learned (CompressAI) codec.

``ImageCoder.encode_batch(arrays)`` -> ``CodedImage`` per array: the payload
(source width and height as varints, then the architecture's body) and a
16-bit check of the latent *symbols*. ``decode_batch`` returns arrays of the
source size. The coder pads images to the model's stride by edge replication
and crops them back, batches same-size images, frames the payload and checks
it; the entropy coding of each architecture is a latent codec of its own
(``latent_codecs``: factorized, hyperprior, checkerboard, CompressAI zoo).

Every body is parsed and entropy-decoded back at encode time, by the
decoder's code path, and every symbol compared before the bytes are accepted
(exact architectures). At decode the symbol check is verified (zoo models:
the payload check). The formats, the exactness rules and the bounds a decoder
checks are in docs/format.md ("Image section").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import image_models, latent_codecs
from .imageio import MAX_PIXELS
from .latent_codecs import ImageCodecError
from .varint import read_varint, write_varint


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


def training_loss(model: image_models.LoadedModel):
    """The loss a point's transforms were last trained at (``search_loss.SearchLoss``):
    the zoo's record for a shipped checkpoint, else the training configuration an
    exported checkpoint carries. A checkpoint whose last stage trained the
    entropy model alone records no such loss: give one (``latent_loss``)."""
    from . import zoo
    from .search_loss import SearchLoss

    entry = zoo.entry(model.name)
    if entry is not None and entry.fingerprint == model.fingerprint:
        return SearchLoss(*entry.loss)
    cfg = (model.meta or {}).get("train_config") or {}
    if cfg.get("lmbda") and cfg.get("train_part", "all") != "entropy":
        return SearchLoss(float(cfg["lmbda"]), float(cfg.get("lpips_weight") or 0.0))
    raise ValueError(f"{model.name} records no training loss for a latent search (its last stage trained "
                     f"{cfg.get('train_part', 'nothing recorded')}): give latent_loss LAMBDA,LPIPS_WEIGHT")


def open_coder(codec: str = image_models.DEFAULT_CODEC, **kwargs):
    """The coder ``--codec`` names: an ``ImageCoder`` for a point, a
    ``multires.MultiResCoder`` for a mode set (``A+B@1/2``). Keyword arguments
    as ``ImageCoder``'s."""
    from . import multires

    if multires.is_mode_set(codec):
        if kwargs.pop("text_encoder", None) is not None:
            raise ValueError("a mode set has no text-guided point: text_encoder does not apply")
        return multires.MultiResCoder(codec, **kwargs)
    return ImageCoder(codec, **kwargs)


class ImageCoder:
    """Codes RGB arrays with one codec point (``--codec``: a zoo name, a
    checkpoint id or path, or ``zoo:ARCH:QUALITY``). ``arch`` is the point's
    latent codec (``latent_codecs``). ``latent_steps`` > 0: the encoder
    searches each image's latents for that many steps (``latent_search``)
    against ``latent_loss`` (default: ``training_loss``); decoding is
    unchanged."""

    def __init__(self, codec: str = image_models.DEFAULT_CODEC, device: str = "cpu",
                 zoo_pretrained: bool = True, text_encoder: str | None = None, latent_steps: int = 0,
                 latent_loss=None) -> None:
        self.model = image_models.resolve(codec, zoo_pretrained=zoo_pretrained)
        self.device = device
        self.net = self.model.net.to(device).eval()
        self.stride = self.model.stride
        self.arch = latent_codecs.for_model(self.model, self.net, device)
        self.latent_steps, self.latent_loss = 0, None
        if latent_steps:
            self._set_latent_search(int(latent_steps), latent_loss)
        # a text-guided point (codec/text_guided.py) encodes with captions; its text encoder loads on
        # first encode (decoding never needs it). ``text_encoder``: where its recorded weights lie, when
        # not under the recorded name
        self.text_guided = hasattr(self.net, "analysis")
        self._text_encoder_spec = text_encoder
        self._text_encoder = None

    def _set_latent_search(self, steps: int, loss) -> None:
        """Encode with a latent search of ``steps`` steps (``latent_search``)
        against ``loss`` (a ``SearchLoss``, its ``LAMBDA,LPIPS`` spelling, or
        None: the loss the point's transforms were trained at)."""
        from . import latent_search
        from .search_loss import SearchLoss

        if steps < 0:
            raise ValueError(f"latent_steps must be >= 0, got {steps}")
        if not self.arch.exact:
            raise ValueError(f"a latent search needs one of semarc's own architectures, not {self.model.arch}")
        if loss is None:
            loss = training_loss(self.model)
        elif not isinstance(loss, SearchLoss):
            loss = SearchLoss.parse(loss)
        lpips_net = None
        if loss.lpips_weight > 0:
            from ..metrics import LPIPSAlex

            lpips_net = LPIPSAlex().to(self.device)
        self.latent_steps, self.latent_loss = steps, loss

        def search(x, y, z, size):
            return latent_search.search_latents(self.net, x, y, z, size, steps, loss, lpips_net)

        self.arch.search = search

    def text_encoder(self):
        """The text encoder this point was trained with (weights checked)."""
        if self._text_encoder is None:
            from .text_encoders import TextEncoderError, load_matching

            try:
                self._text_encoder = load_matching(self.model.config["text_encoder"], self._text_encoder_spec)
            except TextEncoderError as e:
                raise ImageCodecError(str(e)) from e
        return self._text_encoder

    def describe(self) -> dict:
        """The coder's profile (what a shard's footer records). A text-guided
        point's ``config`` names its text encoder (identity and weights)."""
        return {"kind": "image", "codec": self.model.name, "arch": self.model.arch, "config": self.model.config,
                "stride": self.stride, "check": "crc32&0xffff of int32 latent symbols" if self.arch.exact
                else "crc32&0xffff of payload", "fingerprint": self.model.fingerprint} | self.arch.describe()

    # -- encode -------------------------------------------------------------------
    @torch.inference_mode()
    def encode_batch(self, arrays: list[np.ndarray], verify: bool = True,
                     texts: list[str | None] | None = None) -> list[CodedImage]:
        """Code HxWx3 uint8 arrays. ``texts``: each image's caption, read by a
        text-guided point's encoder (None or missing: the empty text) and
        ignored by every other point; the bitstream never holds it."""
        out: list[CodedImage | None] = [None] * len(arrays)
        groups: dict[tuple, list[int]] = {}
        emb: list = [None] * len(arrays)
        if texts is not None and len(texts) != len(arrays):
            raise ValueError(f"{len(texts)} texts for {len(arrays)} images")
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ImageCodecError(f"image {i}: expected HxWx3 uint8, got {a.shape} {a.dtype}")
            h, w = a.shape[:2]
            if not 0 < h * w <= MAX_PIXELS:
                raise ImageCodecError(f"image {i}: {w}x{h} is outside 1..{MAX_PIXELS} pixels")
            key = (-(-h // self.stride), -(-w // self.stride), h, w)
            if self.text_guided:  # texts of one length batch without padding: the bytes do not depend on the batch
                emb[i] = self.text_encoder().embed((texts[i] if texts else None) or "").to(self.device)
                key += (emb[i].shape[0],)
            groups.setdefault(key, []).append(i)
        for (_, _, h, w, *_), idx in groups.items():
            x = torch.stack([torch.from_numpy(np.array(arrays[i])).permute(2, 0, 1) for i in idx]).float().div_(255.0)
            x = _pad(x.to(self.device), self.stride)
            header = write_varint(w) + write_varint(h)
            if not self.arch.exact:
                for i, body in zip(idx, self.arch.encode(x)):
                    out[i] = CodedImage(header + body, check16(header + body), w, h)
                continue
            text = (torch.stack([emb[i] for i in idx]), None) if self.text_guided else None
            bodies, syms, expect = self.arch.encode(x, text, size=(h, w))
            hp, wp = x.shape[-2:]
            for j, i in enumerate(idx):
                if verify:
                    back = self.arch.entropy_decode(self.arch.split(bodies[j]), hp, wp, expect[j])[1]
                    if back != syms[j]:
                        raise ImageCodecError("entropy-coded symbols did not decode back at encode time")
                out[i] = CodedImage(header + bodies[j], check16(syms[j]), w, h)
        return out  # type: ignore[return-value]

    # -- decode -------------------------------------------------------------------
    def _parse(self, payload: bytes) -> tuple[int, int, bytes]:
        try:
            w, pos = read_varint(payload, 0)
            h, pos = read_varint(payload, pos)
        except ValueError as e:
            raise ImageCodecError(f"truncated image header: {e}") from e
        if not (0 < w <= 1 << 20 and 0 < h <= 1 << 20 and w * h <= MAX_PIXELS):
            raise ImageCodecError(f"image size {w}x{h} in the header is outside what the encoder writes "
                                  f"(1..{MAX_PIXELS} pixels; corrupt bytes?)")
        return w, h, payload[pos:]

    @torch.inference_mode()
    def decode_batch(self, items: list[tuple[bytes, int]]) -> list[np.ndarray | Exception]:
        """``(payload, check)`` pairs -> HxWx3 uint8 arrays; a corrupt item yields
        an ``ImageCodecError`` in its place (the others still decode).

        Each image is decoded alone, its synthesis included: a batched
        convolution may take another kernel (seen on AMD EPYC CPUs), and a
        record's pixels must not depend on which records share its batch. It
        also bounds a worker's memory to one image."""
        return [self._decode_one(payload, check) for payload, check in items]

    def _decode_one(self, payload: bytes, check: int) -> np.ndarray | ImageCodecError:
        try:
            w, h, body = self._parse(payload)
            if not self.arch.exact and check16(payload) != check:
                raise ImageCodecError("image payload check mismatch (corrupt bytes)")
            parts = self.arch.split(body)
            hp, wp = -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride
            if self.arch.exact:
                y_hat, sym = self.arch.entropy_decode(parts, hp, wp)
                if check16(sym) != check:
                    raise ImageCodecError("decoded latent symbols fail their check: the bitstream is "
                                          "corrupt or was made by different model tables")
            else:
                x_hat = self.arch.decompress(parts, hp, wp)
        except ImageCodecError as e:
            return e
        except Exception as e:  # the entropy decoder raises on garbage
            return ImageCodecError(f"cannot decode image payload: {type(e).__name__}: {e}")
        if self.arch.exact:  # outside the try: a failure here (memory) is not the record's fault
            x_hat = self.arch.synthesize(y_hat)
        x = x_hat.clamp(0, 1)[0, :, :h, :w]
        return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy().copy()
