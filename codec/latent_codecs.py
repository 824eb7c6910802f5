"""The entropy coding of each image architecture, one class each, behind one
small interface (as CompressAI's latent codecs): ``ImageCoder`` pads, batches
and frames; a latent codec turns a padded batch into bodies and back.

* ``encode(x)`` -> per image: the body, its symbol bytes (the check covers
  them) and what the encode-time verification reuses (``entropy_decode``'s
  ``expect``);
* ``split(body)`` -> the body's parts (strings, listed indexes), every length
  checked against the body;
* ``entropy_decode(parts, hp, wp, expect)`` -> (the latent with a batch
  dimension of 1, its symbol bytes);
* ``synthesize(y_hat)`` -> the padded image batch.

``Factorized``, ``Hyperprior`` and ``Checkerboard`` decode exactly across
machines (integer tables shipped in the checkpoint; float64 scales with the
margin-and-list rule); ``Zoo`` (CompressAI zoo models) decodes whole payloads
with CompressAI's own ``decompress`` and is checked on its payload bytes.
The formats are specified in docs/format.md ("Image payload"). Every string is
decoded by the bounds-checked decoder of ``rans``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyModel

from . import image_models, rans
from .varint import read_varint, write_varint

SCALE_MARGIN = 2.0 ** -26  # relative distance from a Gaussian table boundary that is listed


class ImageCodecError(ValueError):
    pass


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


class LatentCodec:
    """The interface (module docstring). ``exact``: the check covers the
    latent symbols, decoded identically on every machine."""

    exact = True

    def __init__(self, net: torch.nn.Module, stride: int, device: str) -> None:
        self.net, self.stride, self.device = net, stride, device
        # encoder-side latent search (``latent_search``; ``image.ImageCoder``'s latent_steps): a callable
        # (x, y, z, size) -> (y, z) run between the analysis and the coding, or None
        self.search = None

    def describe(self) -> dict:
        return {}

    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.net.g_s(y_hat)

    def analyze(self, x: torch.Tensor, text: tuple | None = None) -> torch.Tensor:
        """``image_models.analysis``, its refusal an ``ImageCodecError``."""
        try:
            return image_models.analysis(self.net, x, text)
        except ValueError as e:
            raise ImageCodecError(str(e)) from e


class Factorized(LatentCodec):
    """One latent, one fixed table per channel (Balle et al. 2017)."""

    def __init__(self, net, stride, device) -> None:
        super().__init__(net, stride, device)
        self._eb_tables = _rans_tables(net.entropy_bottleneck)

    def _symbols(self, y_hat: torch.Tensor) -> torch.Tensor:
        eb = self.net.entropy_bottleneck
        med = eb._get_medians()
        return torch.round(y_hat - med).to(torch.int32)

    def encode(self, x: torch.Tensor, text: tuple | None = None,
               size: tuple[int, int] | None = None) -> tuple[list[bytes], list[bytes], list]:
        """``size``: (h, w) of the images before padding (what a latent search scores)."""
        eb = self.net.entropy_bottleneck
        y = self.analyze(x, text)
        if self.search is not None:
            y, _ = self.search(x, y, None, size or tuple(x.shape[-2:]))
        bodies = eb.compress(y)
        sym = self._symbols(eb.quantize(y, "dequantize", eb._get_medians()))
        return bodies, [sym[j].cpu().numpy().tobytes() for j in range(x.shape[0])], [None] * x.shape[0]

    def split(self, body: bytes) -> list:
        return [body]

    def entropy_decode(self, parts: list, hp: int, wp: int, expect=None) -> tuple[torch.Tensor, bytes]:
        shape = (hp // self.stride, wp // self.stride)
        y_hat = _decode_bottleneck(self.net.entropy_bottleneck, self._eb_tables, parts[0], shape)
        return y_hat, self._symbols(y_hat)[0].cpu().numpy().tobytes()


class Hyperprior(Factorized):
    """The scale hyperprior (Balle et al. 2018): z coded like ``Factorized``'s
    latent; each element of y picks a Gaussian table by its float64 scale
    ``h_s(z)``, with every scale within ``SCALE_MARGIN`` (relative) of a
    table boundary listed in the body with the index the encoder used."""

    def __init__(self, net, stride, device) -> None:
        super().__init__(net, stride, device)
        self._h_s64 = copy.deepcopy(net.h_s).double().eval()
        gc = net.gaussian_conditional
        self._bounds = gc.scale_table.detach().double().to(device)[:-1].contiguous()
        self._n_tables = int(gc._quantized_cdf.shape[0])
        self._tables = _Tables(gc)

    def describe(self) -> dict:
        out = {"scales": f"float64 h_s; indexes within {SCALE_MARGIN!r} (relative) of a table boundary listed"}
        if getattr(self.net, "h_m", None) is not None:
            out["means"] = "float32 h_m(z_hat), added to the decoded symbols round(y - mean)"
        return out

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

    def encode(self, x: torch.Tensor, text: tuple | None = None,
               size: tuple[int, int] | None = None) -> tuple[list[bytes], list[bytes], list[tuple]]:
        """Bodies (z string, listed indexes, y strings), symbol bytes and the
        tables (``entropy_decode``'s ``expect``) per image. The tables are
        computed image by image, by the decoder's own functions on exactly the
        inputs the decoder will have (z_hat, then the anchors alone), so a
        batch and single images give the same bytes. ``size``: (h, w) of the
        images before padding (what a latent search scores)."""
        net = self.net
        eb = net.entropy_bottleneck
        y = self.analyze(x, text)
        z = image_models.hyper_analysis(net, y)
        if self.search is not None:
            y, z = self.search(x, y, z, size or tuple(x.shape[-2:]))
        z_strings = eb.compress(z)
        # the decoder's z_hat: symbols + medians, what decompress returns (the
        # verification checks it bit for bit)
        z_hat = eb.quantize(z, "dequantize", eb._get_medians())
        zsym = self._symbols(z_hat)
        bodies, syms, expect = [], [], []
        for j in range(x.shape[0]):
            zj = z_hat[j:j + 1]
            mu = image_models.latent_means(net, zj)  # image by image, as the decoder computes them
            yj, _ = image_models.quantize_latent(y[j:j + 1], mu)  # the symbols
            ysym = yj.to(torch.int32)
            hyper = self._h_s64(zj.double())
            y_string, idx, rel, tables = self._code_y(yj, hyper)
            bodies.append(write_varint(len(z_strings[j])) + z_strings[j]
                          + self._pack_listed(idx[0], (rel < SCALE_MARGIN)[0]) + y_string)
            syms.append(zsym[j].cpu().numpy().tobytes() + ysym[0].cpu().numpy().tobytes())
            expect.append((zj, hyper, tables, mu))
        return bodies, syms, expect

    def _code_y(self, yj: torch.Tensor, hyper: torch.Tensor) -> tuple[bytes, torch.Tensor, torch.Tensor, list]:
        """One image's y string, its table indexes and distances, and the
        tables per pass."""
        idx, rel = self._table_indexes(hyper)
        return self._tables.encode(yj, idx), idx, rel, [(idx, rel)]

    def split(self, body: bytes) -> list:
        """``[z, [(position, index)...], y strings...]``."""
        try:
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
            return [z, listed, *self._split_y(body, p)]
        except ValueError as e:
            raise ImageCodecError(f"truncated or corrupt image body: {e}") from e

    def _split_y(self, body: bytes, p: int) -> list[bytes]:
        return [body[p:]]

    def entropy_decode(self, parts: list, hp: int, wp: int,
                       expect: tuple | None = None) -> tuple[torch.Tensor, bytes]:
        """(y_hat with a batch dimension of 1, symbol bytes) for one padded size.

        ``expect`` (encode-time verification): ``(z_hat, h_s64(z_hat), tables,
        means)`` as the encoder computed them for this image with these same functions.
        The decoder's tables are a pure function of the decoded z_hat and (second
        pass) the decoded anchors; so once the decoded z_hat equals the
        encoder's bit for bit, they are the encoder's, and are taken from it
        instead of being computed a second time (the caller then compares every
        decoded symbol, anchors included, with the encoder's)."""
        z_hat = _decode_bottleneck(self.net.entropy_bottleneck, self._eb_tables, parts[0],
                                   (hp // self.stride, wp // self.stride))
        if expect is not None and not torch.equal(z_hat, expect[0]):
            raise ImageCodecError("the hyper-latent did not decode back at encode time")
        hyper = self._h_s64(z_hat.double()) if expect is None else expect[1]
        y_sym = self._decode_y(parts, hyper, None if expect is None else expect[2])
        sym = self._symbols(z_hat)[0].cpu().numpy().tobytes() + y_sym[0].to(torch.int32).cpu().numpy().tobytes()
        mu = image_models.latent_means(self.net, z_hat) if expect is None else expect[3]
        return (y_sym if mu is None else y_sym + mu), sym

    def _decode_y(self, parts: list, hyper: torch.Tensor, tables: list | None) -> torch.Tensor:
        i, r = self._table_indexes(hyper) if tables is None else tables[0]
        idx = self._settle(i.clone(), r, parts[1], None)
        return self._tables.decode(parts[2], idx).view(hyper.shape).float()  # the symbols (no means)

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


class Checkerboard(Hyperprior):
    """The hyperprior plus a checkerboard context (He et al. 2021), coded in
    two passes: the anchors, then the rest, whose scales also see the decoded
    anchors (float64 computations over integers; the same margin and list
    cover both passes)."""

    def __init__(self, net, stride, device) -> None:
        super().__init__(net, stride, device)
        # float64 copies of the context and of entropy_params' 1x1 layers; the context as
        # (M_in * 25, M_out), rows in (input channel, tap) order: the sparse context's right factor
        self._ctx_w = (net.context.weight.detach().double().permute(1, 2, 3, 0)
                       .reshape(-1, net.context.weight.shape[0]).contiguous().to(device))
        self._ctx_b = net.context.bias.detach().double().to(device)
        self._mlp = [(m.weight.detach().double().flatten(1).to(device), m.bias.detach().double().to(device))
                     for m in net.entropy_params if isinstance(m, torch.nn.Conv2d)]

    def describe(self) -> dict:
        return super().describe() | {"context": "checkerboard, two passes; float64 context over the decoded anchors"}

    def _anchor_grid(self, like: torch.Tensor) -> torch.Tensor:
        """The checkerboard's anchor positions: an H x W bool mask of ``like``'s grid."""
        return self.net.anchor_mask(like)[0, 0].bool()

    def _checkerboard_indexes(self, hyper: torch.Tensor, y_round: torch.Tensor | None,
                              sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_table_indexes`` at the grid positions ``sel`` (H x W bool) only, as
        (B, M, n) tensors: from the float64 hyperprior scales ``hyper`` and, for
        the second pass (``y_round`` given), the context of the anchors of
        ``y_round``. The same function as the model's ``scales``, in float64:
        the context is summed from the nonzero anchors alone (the latent is
        mostly zeros) and ``entropy_params`` runs on the selected positions
        only."""
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

    def _code_y(self, yj, hyper):
        a = self._anchor_grid(yj)
        # the second pass reads yj's anchors alone (``_context64`` masks them), as the decoder has them
        tables = [self._checkerboard_indexes(hyper, None, a), self._checkerboard_indexes(hyper, yj, ~a)]
        idx = torch.zeros(yj.shape, dtype=torch.int32, device=yj.device)
        rel = torch.zeros(yj.shape, dtype=torch.float64, device=yj.device)
        strings = []
        for sel, (i, r) in zip((a, ~a), tables):
            idx[..., sel], rel[..., sel] = i, r
            strings.append(self._tables.encode(yj[0][:, sel], i))
        return write_varint(len(strings[0])) + strings[0] + strings[1], idx, rel, tables

    def _split_y(self, body: bytes, p: int) -> list[bytes]:
        la, p = read_varint(body, p)
        if p + la > len(body):
            raise ValueError("body shorter than its anchor string")
        return [body[p:p + la], body[p + la:]]

    def _decode_y(self, parts, hyper, tables):
        # pass 1: the anchors, from the hyperprior alone; pass 2: the rest, which
        # also see the decoded anchors (the context reads anchor positions only)
        y_hat = torch.zeros(hyper.shape, dtype=torch.float32, device=hyper.device)
        a = self._anchor_grid(y_hat)
        for k, (sel, known, string) in enumerate(((a, None, parts[2]), (~a, y_hat, parts[3]))):
            i, r = self._checkerboard_indexes(hyper, known, sel) if tables is None else tables[k]
            idx = torch.full(hyper.shape, -1, dtype=torch.int32, device=hyper.device)
            rel = torch.ones(hyper.shape, dtype=torch.float64, device=hyper.device)
            idx[..., sel], rel[..., sel] = i, r
            idx = self._settle(idx, rel, parts[1], sel.expand(hyper.shape))
            y_hat[..., sel] = self._tables.decode(string, idx[..., sel]).view(i.shape).to(y_hat)
        return y_hat


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


class Zoo(LatentCodec):
    """A CompressAI zoo model, coded by its own ``compress``/``decompress``
    (float-derived tables: not exact across machines; its check covers the
    payload bytes). Every entropy model decodes through the bounds-checked
    decoder; the autoregressive models, which do not, are refused."""

    exact = False

    def __init__(self, net, stride, device, name: str, arch: str) -> None:
        super().__init__(net, stride, device)
        if arch in _ZOO_SEQUENTIAL:
            raise ImageCodecError(f"{name}: CompressAI's autoregressive models decode through a range decoder "
                                  f"that trusts its input; semarc does not run them (use bmshj2018-factorized, "
                                  f"bmshj2018-hyperprior or mbt2018-mean)")
        for m in net.modules():
            if isinstance(m, EntropyModel):
                m.entropy_coder = _SafeEntropyCoder(m)
        with torch.inference_mode():
            probe = net.compress(torch.zeros(1, 3, stride, stride, device=device))
        self._n_strings = len(probe["strings"])

    def encode(self, x: torch.Tensor) -> list[bytes]:
        res = self.net.compress(x)
        out = []
        for j in range(x.shape[0]):
            parts = [s[j] for s in res["strings"]]
            out.append(b"".join(write_varint(len(p)) + p for p in parts[:-1]) + parts[-1])
        return out

    def split(self, body: bytes) -> list:
        try:
            parts, p = [], 0
            for _ in range(self._n_strings - 1):
                ln, p = read_varint(body, p)
                parts.append(body[p:p + ln])
                p += ln
            return parts + [body[p:]]
        except ValueError as e:
            raise ImageCodecError(f"truncated or corrupt image body: {e}") from e

    def decompress(self, parts: list, hp: int, wp: int) -> torch.Tensor:
        # compressai's decompress takes the hyper-latent (z) shape, stride 64
        return self.net.decompress([[p] for p in parts], (hp // 64, wp // 64))["x_hat"]


def for_model(model, net, device: str) -> LatentCodec:
    """The latent codec of a loaded model (``image_models.LoadedModel``)."""
    cls = {"factorized": Factorized, "hyperprior": Hyperprior, "checkerboard": Checkerboard,
           "text-checkerboard": Checkerboard}.get(model.arch)  # text guides the encoder's analysis alone
    if cls is not None:
        return cls(net, model.stride, device)
    return Zoo(net, model.stride, device, model.name, model.arch)
