"""The image coder: RGB array <-> bytes with a learned (CompressAI) codec.

``ImageCoder.encode_batch(arrays)`` -> ``CodedImage`` per array: the payload
(source width and height as varints, then the entropy-coded latent strings)
and a 16-bit check of the latent *symbols*. ``decode_batch`` returns arrays of
the source size. Images are padded to the model's stride by edge
replication and cropped back; same-size images are batched together.

Exactness (semarc architectures): every symbol is decoded with integer CDF
tables that ship inside the checkpoint (never recomputed from float
parameters at load), so the symbols are the same on every machine.

* ``factorized``: one latent, one fixed table per channel.
* ``hyperprior``: the hyper-latent z is coded like ``factorized``; each
  element of the latent y picks one of the Gaussian tables by an index that
  the decoder recomputes from z with the hyper-synthesis ``h_s``. That float
  computation is where CompressAI's hyperprior models break across machines
  (a scale near a table boundary lands on the other side). semarc runs
  ``h_s`` in float64 on both sides and, at encode, lists every element whose
  scale lies within a relative ``SCALE_MARGIN`` (2^-26) of a boundary, with
  the index the encoder used. The decoder takes listed indexes from the list;
  every other scale is at least 2^-26 (relative) from a boundary, ~10^8 times
  the float64 differences between devices, batch sizes and thread counts, so
  both sides pick the same table. The list is almost always empty (one byte);
  an unlisted scale the decoder finds within half the margin of a boundary
  is reported as a numerical disagreement, never decoded silently.
* ``checkerboard``: the hyperprior plus a checkerboard context, coded in two
  passes (anchors, then the rest). The second pass's scales come from float64
  computations over the decoded anchors (integers), with the same margin and
  list covering both passes.

The encoder computes each image's tables one image at a time, with the
decoder's functions on the decoder's inputs (z_hat; then the anchors alone),
so a batch codes the same bytes as single images. At encode time the payload
is parsed and entropy-decoded back by the decoder's code path and every
symbol compared before the bytes are accepted. The float64 tables are not
computed a second time for that: they are a pure function of z_hat and the
anchors, so once the decoded z_hat equals the encoder's bit for bit they are
the decoder's tables (the float work would double the exactness cost and
check nothing the symbol comparison does not). At decode the symbol check is
verified. CompressAI zoo models use float-derived
tables: their check covers the payload bytes only.

Payload after the size varints: ``factorized``: the y string; ``hyperprior``:
varint len(z string), z string, varint count of listed indexes, then per
entry varint (flat position - previous position - 1 ... delta coded) and one
index byte, then the y string.
``checkerboard``: as ``hyperprior`` up to the list, then varint len(anchor
string), the anchor string, the string of the other positions.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyModel

from . import image_models, rans
from .imageio import MAX_PIXELS
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


SCALE_MARGIN = 2.0 ** -26  # relative distance from a Gaussian table boundary that is listed


class _Tables:
    """A Gaussian conditional's integer tables: the lists CompressAI's range
    encoder takes, converted once per coder and each row cut to its length
    (``compress`` converts the whole padded table, 64 x ~3000 entries, on
    every call; the coder reads a row only below its length, so these are the
    same bytes, checked in tests), and the bounds-checked decoder's
    (``rans.Tables``) for the same tables."""

    def __init__(self, gc) -> None:
        self.coder = gc.entropy_coder
        self.length = gc._cdf_length.reshape(-1).int().tolist()
        self.cdf = [row[:n] for row, n in zip(gc._quantized_cdf.tolist(), self.length)]
        self.offset = gc._offset.reshape(-1).int().tolist()
        self.rans = _rans_tables(gc)

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor) -> bytes:
        """Integer-valued ``symbols`` coded with the tables ``indexes`` (same shape)."""
        return self.coder.encode_with_indexes(symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(),
                                              self.cdf, self.length, self.offset)

    def decode(self, string: bytes, indexes: torch.Tensor) -> torch.Tensor:
        """The int32 symbols of ``string`` (flat, one per index)."""
        return torch.from_numpy(_rans_decode(self.rans, string, indexes.reshape(-1).cpu().numpy())).to(indexes.device)


def _rans_tables(em) -> rans.Tables:
    """The bounds-checked decoder's tables of a CompressAI entropy model."""
    try:
        return rans.Tables(em._quantized_cdf.cpu().numpy(), em._cdf_length.cpu().numpy(), em._offset.cpu().numpy())
    except ValueError as e:
        raise ImageCodecError(f"malformed entropy tables in the checkpoint: {e}") from e


def _rans_decode(tables: rans.Tables, string: bytes, indexes: np.ndarray) -> np.ndarray:
    try:
        return tables.decode(string, indexes)
    except rans.RansError as e:
        raise ImageCodecError(f"corrupt entropy-coded string: {e}") from e


def _decode_bottleneck(eb, tables: rans.Tables, string: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """``EntropyBottleneck.decompress([string], shape)`` with the bounds-checked
    decoder: the symbols (channel c coded with table c) plus the medians."""
    c = int(eb._quantized_cdf.shape[0])
    n = shape[0] * shape[1]
    sym = _rans_decode(tables, string, np.repeat(np.arange(c, dtype=np.int32), n))
    med = eb._get_medians().detach()
    return torch.from_numpy(sym).view(1, c, *shape).to(med.device).type(med.dtype) + med


class _SafeEntropyCoder:
    """Stands in for a CompressAI entropy model's coder in the zoo models:
    encoding is CompressAI's, decoding the bounds-checked decoder's (tables
    converted once per model)."""

    def __init__(self, model) -> None:
        self._model, self._coder, self._tables = model, model.entropy_coder, None

    def encode_with_indexes(self, *args):
        return self._coder.encode_with_indexes(*args)

    def decode_with_indexes(self, string, indexes, *_tables):
        if self._tables is None:
            self._tables = _rans_tables(self._model)
        return _rans_decode(self._tables, string, np.asarray(indexes, dtype=np.int32)).tolist()


# zoo models whose decompress runs CompressAI's RansDecoder directly (a serial context model)
_ZOO_SEQUENTIAL = ("zoo:mbt2018", "zoo:cheng2020-anchor", "zoo:cheng2020-attn")


class ImageCoder:
    def __init__(self, codec: str = image_models.DEFAULT_CODEC, device: str = "cpu",
                 zoo_pretrained: bool = True) -> None:
        self.model = image_models.resolve(codec, zoo_pretrained=zoo_pretrained)
        self.device = device
        self.net = self.model.net.to(device).eval()
        self.stride = self.model.stride
        self._exact = self.model.arch in image_models.EXACT_ARCHS
        self._hyper = self.model.arch in ("hyperprior", "checkerboard")
        self._ckbd = self.model.arch == "checkerboard"
        if self._exact:
            self._eb_tables = _rans_tables(self.net.entropy_bottleneck)
        else:  # a zoo model: every entropy model decodes through the bounds-checked decoder
            if self.model.arch in _ZOO_SEQUENTIAL:
                raise ImageCodecError(f"{self.model.name}: CompressAI's autoregressive models decode through a "
                                      f"range decoder that trusts its input; semarc does not run them (use "
                                      f"bmshj2018-factorized, bmshj2018-hyperprior or mbt2018-mean)")
            for m in self.net.modules():
                if isinstance(m, EntropyModel):
                    m.entropy_coder = _SafeEntropyCoder(m)
        if self._ckbd:  # float64 copies of the context and of entropy_params' 1x1 layers
            # (M_in * 25, M_out), rows in (input channel, tap) order: the sparse context's right factor
            self._ctx_w = (self.net.context.weight.detach().double().permute(1, 2, 3, 0)
                           .reshape(-1, self.net.context.weight.shape[0]).contiguous().to(device))
            self._ctx_b = self.net.context.bias.detach().double().to(device)
            self._mlp = [(m.weight.detach().double().flatten(1).to(device), m.bias.detach().double().to(device))
                         for m in self.net.entropy_params if isinstance(m, torch.nn.Conv2d)]
        if self._hyper:
            self._h_s64 = copy.deepcopy(self.net.h_s).double().eval()
            gc = self.net.gaussian_conditional
            self._bounds = gc.scale_table.detach().double().to(device)[:-1].contiguous()
            self._n_tables = int(gc._quantized_cdf.shape[0])
            self._tables = _Tables(gc)

    def describe(self) -> dict:
        d = {"kind": "image", "codec": self.model.name, "arch": self.model.arch, "config": self.model.config,
             "stride": self.stride, "check": "crc32&0xffff of int32 latent symbols" if self._exact
             else "crc32&0xffff of payload", "fingerprint": self.model.fingerprint}
        if self._hyper:
            d["scales"] = f"float64 h_s; indexes within {SCALE_MARGIN!r} (relative) of a table boundary listed"
        if self._ckbd:
            d["context"] = "checkerboard, two passes; float64 context over the decoded anchors"
        return d

    # -- symbols ----------------------------------------------------------------
    def _symbols(self, y_hat: torch.Tensor) -> torch.Tensor:
        eb = self.net.entropy_bottleneck
        med = eb._get_medians()
        return torch.round(y_hat - med).to(torch.int32)

    def _checkerboard_indexes(self, hyper: torch.Tensor, y_round: torch.Tensor | None,
                              sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_table_indexes`` for a checkerboard model, at the grid positions
        ``sel`` (H x W bool) only, as (B, M, n) tensors: from the float64
        hyperprior scales ``hyper`` and, for the second pass (``y_round`` given),
        the context of the anchors of ``y_round``. The same function as the
        model's ``scales``, in float64: the context is summed from the nonzero
        anchors alone (the latent is mostly zeros) and ``entropy_params`` runs on
        the selected positions only."""
        base = hyper[..., sel].clamp(min=self.net.scale_min)  # (B, M, n)
        if y_round is None:  # anchors: the context is zero, so only the first layer's log-scale half reads
            h = torch.log(base).transpose(1, 2)  # (B, n, M)
        else:
            h = torch.cat([torch.log(base), self._context64(y_round)[..., sel]], 1).transpose(1, 2)  # (B, n, 2M)
        for k, (w, b) in enumerate(self._mlp):
            h = F.linear(h, w[:, :h.shape[-1]] if k == 0 else w, b)
            if k < len(self._mlp) - 1:
                h = F.leaky_relu(h)
        return self._table_indexes(base * torch.exp(h.transpose(1, 2)))

    def _context64(self, y_round: torch.Tensor) -> torch.Tensor:
        """The 5x5 context convolution of the anchors of ``y_round`` in float64
        (CompressAI conv semantics, padding 2) at the **non-anchor** positions,
        the only ones the second pass reads (at anchors it holds partial sums),
        as one sparse product over the nonzero anchor symbols only: the latent
        is mostly zeros, and of the 25 taps only the 12 with an odd offset lead
        from an anchor to a non-anchor."""
        B, M, H, W = y_round.shape
        anchors = self.net.anchor_mask(y_round).bool().expand(y_round.shape)
        b, c, i, j = torch.nonzero((y_round != 0) & anchors, as_tuple=True)
        v = y_round[b, c, i, j].double()
        dev = y_round.device
        tap = torch.arange(25, device=dev)
        tap = tap[(tap // 5 + tap % 5) % 2 == 1]
        di, dj = tap // 5, tap % 5
        # input (i, j) reaches output (i - di + 2, j - dj + 2); rows index a grid padded by 2
        rows = ((b[:, None] * (H + 4) + i[:, None] - di + 4) * (W + 4) + (j[:, None] - dj + 4)).reshape(-1)
        cols = (c[:, None] * 25 + tap).reshape(-1)
        taps = torch.sparse_coo_tensor(torch.stack([rows, cols]), v[:, None].expand(-1, len(tap)).reshape(-1),
                                       (B * (H + 4) * (W + 4), M * 25),
                                       check_invariants=False)  # in range by construction
        out = torch.sparse.mm(taps, self._ctx_w)
        out = out.view(B, H + 4, W + 4, -1)[:, 2:H + 2, 2:W + 2].permute(0, 3, 1, 2)
        return out + self._ctx_b.view(1, -1, 1, 1)

    def _table_indexes(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian table index per float64 scale (CompressAI's ``build_indexes``
        rule: the number of table boundaries below the scale) and each scale's
        relative distance to the nearest boundary (compared with
        ``SCALE_MARGIN`` by the callers)."""
        b = self._bounds
        idx = torch.searchsorted(b, s.reshape(-1).contiguous()).reshape(s.shape)
        lo = b[(idx - 1).clamp(min=0)]
        hi = b[idx.clamp(max=len(b) - 1)]
        rel = torch.minimum((s - lo).abs() / lo, (s - hi).abs() / hi)
        return idx.to(torch.int32), rel

    @staticmethod
    def _pack_listed(idx: torch.Tensor, near: torch.Tensor) -> bytes:
        pos = torch.nonzero(near.reshape(-1)).reshape(-1).tolist()
        flat = idx.reshape(-1)
        out, prev = [write_varint(len(pos))], -1
        for p in pos:
            out.append(write_varint(p - prev - 1) + bytes([int(flat[p])]))
            prev = p
        return b"".join(out)

    # -- encode -------------------------------------------------------------------
    @torch.inference_mode()
    def encode_batch(self, arrays: list[np.ndarray], verify: bool = True) -> list[CodedImage]:
        out: list[CodedImage | None] = [None] * len(arrays)
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ImageCodecError(f"image {i}: expected HxWx3 uint8, got {a.shape} {a.dtype}")
            h, w = a.shape[:2]
            if not 0 < h * w <= MAX_PIXELS:
                raise ImageCodecError(f"image {i}: {w}x{h} is outside 1..{MAX_PIXELS} pixels")
            groups.setdefault((-(-h // self.stride), -(-w // self.stride), h, w), []).append(i)
        for (_, _, h, w), idx in groups.items():
            x = torch.stack([torch.from_numpy(np.array(arrays[i])).permute(2, 0, 1) for i in idx]).float().div_(255.0)
            x = _pad(x.to(self.device), self.stride)
            if self._hyper:
                bodies, syms, expect = self._encode_hyper(x)
            elif self._exact:
                y = self.net.g_a(x)
                bodies = self.net.entropy_bottleneck.compress(y)
                sym = self._symbols(self.net.entropy_bottleneck.quantize(
                    y, "dequantize", self.net.entropy_bottleneck._get_medians()))
                syms = [sym[j].cpu().numpy().tobytes() for j in range(x.shape[0])]
                expect = [None] * x.shape[0]
            if self._exact:
                hp, wp = x.shape[-2:]
                for j, i in enumerate(idx):
                    if verify:
                        back = self._entropy_decode(self._split(bodies[j]), hp, wp, expect[j])[1]
                        if back != syms[j]:
                            raise ImageCodecError("entropy-coded symbols did not decode back at encode time")
                    out[i] = CodedImage(write_varint(w) + write_varint(h) + bodies[j], check16(syms[j]), w, h)
            else:
                res = self.net.compress(x)
                for j, i in enumerate(idx):
                    parts = [s[j] for s in res["strings"]]
                    body = b"".join(write_varint(len(p)) + p for p in parts[:-1]) + parts[-1]
                    payload = write_varint(w) + write_varint(h) + body
                    out[i] = CodedImage(payload, check16(payload), w, h)
        return out  # type: ignore[return-value]

    def _encode_hyper(self, x: torch.Tensor) -> tuple[list[bytes], list[bytes], list[tuple]]:
        """Bodies (z string, listed indexes, y string), symbol bytes and the
        tables (``_entropy_decode``'s ``expect``) per image. The tables are
        computed image by image, by the decoder's own functions on exactly the
        inputs the decoder will have (z_hat, then the anchors alone), so a
        batch and single images give the same bytes."""
        net = self.net
        eb = net.entropy_bottleneck
        y = net.g_a(x)
        z = net.h_a(image_models.hyper_analysis_input(net, y))
        z_strings = eb.compress(z)
        # the decoder's z_hat: symbols + medians, what decompress returns (the
        # verification checks it bit for bit)
        z_hat = eb.quantize(z, "dequantize", eb._get_medians())
        y_round = torch.round(y)
        zsym = self._symbols(z_hat)
        ysym = y_round.to(torch.int32)
        bodies, syms, expect = [], [], []
        for j in range(x.shape[0]):
            zj, yj = z_hat[j:j + 1], y_round[j:j + 1]
            hyper = self._h_s64(zj.double())
            if self._ckbd:
                a = self._anchor_grid(yj)
                # the second pass reads yj's anchors alone (``_context64`` masks them), as the decoder has them
                tables = [self._checkerboard_indexes(hyper, None, a), self._checkerboard_indexes(hyper, yj, ~a)]
                idx = torch.zeros(yj.shape, dtype=torch.int32, device=y.device)
                rel = torch.zeros(yj.shape, dtype=torch.float64, device=y.device)
                strings = []
                for sel, (i, r) in zip((a, ~a), tables):
                    idx[..., sel], rel[..., sel] = i, r
                    strings.append(self._tables.encode(yj[0][:, sel], i))
                y_string = write_varint(len(strings[0])) + strings[0] + strings[1]
            else:
                idx, rel = self._table_indexes(hyper)
                tables = [(idx, rel)]
                y_string = self._tables.encode(yj, idx)
            bodies.append(write_varint(len(z_strings[j])) + z_strings[j]
                          + self._pack_listed(idx[0], (rel < SCALE_MARGIN)[0]) + y_string)
            syms.append(zsym[j].cpu().numpy().tobytes() + ysym[j].cpu().numpy().tobytes())
            expect.append((zj, hyper, tables))
        return bodies, syms, expect

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

    def _split(self, body: bytes) -> list:
        """The entropy-coded parts of a body: ``[y]`` (factorized),
        ``[z, [(position, index)...], y]`` (hyperprior), or the zoo model's
        strings."""
        try:
            if not self._exact:
                parts, p = [], 0
                for _ in range(self._n_strings() - 1):
                    ln, p = read_varint(body, p)
                    parts.append(body[p:p + ln])
                    p += ln
                return parts + [body[p:]]
            if not self._hyper:
                return [body]
            ln, p = read_varint(body, 0)
            z = body[p:p + ln]
            p += ln
            n, p = read_varint(body, p)
            if n > (len(body) - p) // 2:  # each entry takes at least 2 bytes
                raise ValueError(f"{n} listed indexes in {len(body) - p} bytes")
            listed, prev = [], -1
            for _ in range(n):
                d, p = read_varint(body, p)
                if p >= len(body):
                    raise ValueError("listed index past the end")
                prev += d + 1
                listed.append((prev, body[p]))
                p += 1
            if len(z) != ln or p > len(body):
                raise ValueError("body shorter than its lengths")
            if self._ckbd:
                la, p = read_varint(body, p)
                if p + la > len(body):
                    raise ValueError("body shorter than its anchor string")
                return [z, listed, body[p:p + la], body[p + la:]]
            return [z, listed, body[p:]]
        except ValueError as e:
            raise ImageCodecError(f"truncated or corrupt image body: {e}") from e

    def _entropy_decode(self, parts: list, hp: int, wp: int,
                        expect: tuple | None = None) -> tuple[torch.Tensor, bytes]:
        """(y_hat with a batch dimension of 1, symbol bytes) for one padded size.

        ``expect`` (encode-time verification): ``(z_hat, h_s64(z_hat), tables)``
        as the encoder computed them for this image with these same functions.
        The decoder's tables are a pure function of the decoded z_hat and (second
        pass) the decoded anchors; so once the decoded z_hat equals the
        encoder's bit for bit, they are the encoder's, and are taken from it
        instead of being computed a second time (the caller then compares every
        decoded symbol, anchors included, with the encoder's)."""
        if not self._hyper:
            shape = (hp // self.stride, wp // self.stride)
            y_hat = _decode_bottleneck(self.net.entropy_bottleneck, self._eb_tables, parts[0], shape)
            return y_hat, self._symbols(y_hat)[0].cpu().numpy().tobytes()
        eb = self.net.entropy_bottleneck
        z_hat = _decode_bottleneck(eb, self._eb_tables, parts[0], (hp // self.stride, wp // self.stride))
        if expect is not None and not torch.equal(z_hat, expect[0]):
            raise ImageCodecError("the hyper-latent did not decode back at encode time")
        hyper = self._h_s64(z_hat.double()) if expect is None else expect[1]
        if not self._ckbd:
            i, r = self._table_indexes(hyper) if expect is None else expect[2][0]
            idx = self._settle(i.clone(), r, parts[1], None)
            y_hat = self._tables.decode(parts[2], idx).view(hyper.shape).float()  # the symbols (no means)
        else:
            # pass 1: the anchors, from the hyperprior alone; pass 2: the rest, which
            # also see the decoded anchors (the context reads anchor positions only)
            y_hat = torch.zeros(hyper.shape, dtype=torch.float32, device=hyper.device)
            a = self._anchor_grid(y_hat)
            for k, (sel, known, string) in enumerate(((a, None, parts[2]), (~a, y_hat, parts[3]))):
                i, r = self._checkerboard_indexes(hyper, known, sel) if expect is None else expect[2][k]
                idx = torch.full(hyper.shape, -1, dtype=torch.int32, device=hyper.device)
                rel = torch.ones(hyper.shape, dtype=torch.float64, device=hyper.device)
                idx[..., sel], rel[..., sel] = i, r
                idx = self._settle(idx, rel, parts[1], sel.expand(hyper.shape))
                y_hat[..., sel] = self._tables.decode(string, idx[..., sel]).view(i.shape).to(y_hat)
        sym = self._symbols(z_hat)[0].cpu().numpy().tobytes() + y_hat[0].to(torch.int32).cpu().numpy().tobytes()
        return y_hat, sym

    def _anchor_grid(self, like: torch.Tensor) -> torch.Tensor:
        """The checkerboard's anchor positions: an H x W bool mask of ``like``'s grid."""
        return self.net.anchor_mask(like)[0, 0].bool()

    def _settle(self, idx: torch.Tensor, rel: torch.Tensor, listed: list, sel) -> torch.Tensor:
        """The decoder's table indexes: ``idx`` with the encoder's listed
        indexes put in; an unlisted element (among ``sel``, the elements this
        pass decodes; all if None) within half the margin of a boundary is a
        disagreement with the encoder and an error."""
        flat, relf = idx.reshape(-1), rel.reshape(-1)
        mark = torch.zeros_like(relf, dtype=torch.bool)
        for pos, k in listed:
            if pos >= flat.numel() or k >= self._n_tables:
                raise ImageCodecError(f"listed scale index ({pos}, {k}) out of range (corrupt bytes)")
            flat[pos] = k
            mark[pos] = True
        close = (relf < SCALE_MARGIN / 2) & ~mark
        if sel is not None:
            close &= sel.reshape(-1)
        if bool(close.any()):
            raise ImageCodecError("decoder-side entropy scales differ from the encoder's beyond the "
                                  "exactness margin: a numerical disagreement between machines, or "
                                  "corrupt bytes; refusing to decode")
        return idx

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
        groups: dict[tuple, list[tuple[int, list]]] = {}
        for i, (payload, check) in enumerate(items):
            try:
                w, h, body = self._parse(payload)
                if not self._exact and check16(payload) != check:
                    raise ImageCodecError("image payload check mismatch (corrupt bytes)")
                groups.setdefault((w, h), []).append((i, self._split(body)))
            except ImageCodecError as e:
                out[i] = e
        for (w, h), members in groups.items():
            hp, wp = -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride
            for i, parts in members:  # entropy decoding is per image; synthesis is batched below
                try:
                    if self._exact:
                        y_hat, sym = self._entropy_decode(parts, hp, wp)
                        if check16(sym) != items[i][1]:
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
