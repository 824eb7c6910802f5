"""The bounds-checked rANS decoder: CompressAI's symbols on every valid string,
a clear refusal on every string no encoder writes, and no read outside the
bytes, whatever an image header claims."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from compressai.ans import RansDecoder, RansEncoder
from compressai.entropy_models import GaussianConditional

from semarc.codec import image_models, rans
from semarc.codec.varint import read_varint, write_varint


@pytest.fixture(scope="module")
def gaussian():
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    gc.update()
    return gc._quantized_cdf.tolist(), gc._cdf_length.tolist(), gc._offset.tolist(), gc


def _streams(gaussian, count, seed=0):
    """(string, indexes, symbols) from CompressAI's encoder: Gaussian symbols
    at every table scale, a share of them far outside the tables (bypass coded,
    up to +-2^30)."""
    cdf, ln, off, _ = gaussian
    rng = np.random.default_rng(seed)
    enc = RansEncoder()
    scales = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
    for _ in range(count):
        n = int(rng.integers(1, 2000))
        idx = rng.integers(0, 64, n).astype(np.int32)
        sym = np.round(rng.standard_normal(n) * scales[idx] * rng.choice([1, 1, 4, 3000], n))
        sym = np.clip(sym, -2 ** 30, 2 ** 30).astype(np.int32)
        yield enc.encode_with_indexes(sym.tolist(), idx.tolist(), cdf, ln, off), idx, sym


@pytest.mark.parametrize("impl", ["c", "python"])
def test_decodes_what_compressai_decodes(gaussian, impl, monkeypatch):
    cdf, ln, off, gc = gaussian
    tables = rans.Tables(gc._quantized_cdf.numpy(), ln, off)
    if impl == "python":
        monkeypatch.setattr(rans, "_load", lambda: None)
    else:
        assert rans.implementation() == "c", rans.implementation()
    dec = RansDecoder()
    bypassed = 0
    for string, idx, sym in _streams(gaussian, 60 if impl == "c" else 12):
        ref = np.array(dec.decode_with_indexes(string, idx.tolist(), cdf, ln, off), np.int32)
        assert np.array_equal(ref, sym)
        assert np.array_equal(tables.decode(string, idx), sym)
        bypassed += int((np.abs(sym) > 200).sum())
    assert bypassed > 100  # the escape path was exercised


@pytest.mark.parametrize("impl", ["c", "python"])
def test_refuses_what_no_encoder_writes(gaussian, impl, monkeypatch):
    _, ln, off, gc = gaussian
    tables = rans.Tables(gc._quantized_cdf.numpy(), ln, off)
    if impl == "python":
        monkeypatch.setattr(rans, "_load", lambda: None)
    string, idx, _ = next(_streams(gaussian, 1, seed=3))
    cases = {
        "ends before": string[:-4],
        "does not end where": string + b"\0\0\0\0",
        "whole number": string[:-1],
        "outside the tables": None,
    }
    for what, bad in cases.items():
        with pytest.raises(rans.RansError, match=what):
            if bad is None:
                tables.decode(string, np.full_like(idx, 64))
            else:
                tables.decode(bad, idx)
    # far more symbols than the string holds: refused when the words run out, never read past them
    with pytest.raises(rans.RansError, match="ends before|does not end|bypass"):
        tables.decode(string[:8], np.zeros(10 ** 6, np.int32))
    with pytest.raises(rans.RansError, match="whole number"):
        tables.decode(b"", idx)


def test_tables_are_checked():
    with pytest.raises(ValueError, match="rise strictly"):
        rans.Tables([[0, 100, 100, 65536]], [4], [0])
    with pytest.raises(ValueError, match="length"):
        rans.Tables([[0, 65536]], [3], [0])


@pytest.fixture(scope="module")
def tiny_points(tmp_path_factory):
    """The three exact architectures at small sizes (the shipped points'
    classes; untrained weights decode by the same code)."""
    out = {}
    for arch, cfg in (("factorized", {"N": 16, "M": 24}), ("hyperprior", {"N": 16, "M": 24}),
                      ("checkerboard", {"N": 16, "M": 24})):
        torch.manual_seed(0)
        net = image_models.build(arch, cfg)
        path = tmp_path_factory.mktemp(arch) / f"tiny-{arch}.pt"
        image_models.save_checkpoint(path, arch, cfg, net, meta={})
        out[arch] = str(path)
    return out


_CRAFT = textwrap.dedent("""
    import faulthandler, json, sys
    faulthandler.enable()
    import numpy as np
    from semarc.codec.image import ImageCoder
    from semarc.codec.varint import read_varint, write_varint
    coder = ImageCoder(sys.argv[1])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    c = coder.encode_batch([img])[0]
    w, p = read_varint(c.payload, 0)
    h, p = read_varint(c.payload, p)
    body = c.payload[p:]
    out = {}
    for W, H in json.loads(sys.argv[2]):
        got = coder.decode_batch([(write_varint(W) + write_varint(H) + body, c.check)])[0]
        out[f"{W}x{H}"] = str(got) if isinstance(got, Exception) else f"decoded {got.shape}"
    print(json.dumps(out))
""")


def _crafted(codec: str, sizes) -> dict:
    import json

    r = subprocess.run([sys.executable, "-c", _CRAFT, codec, json.dumps(sizes)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{codec}: decoder process died ({r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


_SIZES = [(6000, 6000), (2000, 2000), (6324, 6324), (20000, 20000), (96, 64 * 3), (1, 1)]


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "checkerboard"])
def test_a_header_claiming_another_size_is_refused(tiny_points, arch):
    """A valid 64x96 record whose header is rewritten to claim other sizes
    (6000x6000 crashed CompressAI's decoder): each is refused with a clear
    error, in a process that stays alive."""
    got = _crafted(tiny_points[arch], _SIZES)
    for size, outcome in got.items():
        assert outcome.startswith(("corrupt entropy-coded string", "image size")), (arch, size, outcome)
    assert "outside what the encoder writes" in got["20000x20000"]


@pytest.mark.parametrize("point", ["semarc-f1", "semarc-h05s"])
def test_a_shipped_point_refuses_a_crafted_header(point):
    got = _crafted(point, [(6000, 6000), (2000, 2000)])
    assert all(o.startswith("corrupt entropy-coded string") for o in got.values()), got


def test_zoo_models_decode_through_the_checked_decoder():
    from semarc.codec.image import ImageCodecError, ImageCoder

    coder = ImageCoder("zoo:bmshj2018-hyperprior:1", zoo_pretrained=False)
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    c = coder.encode_batch([img])[0]
    w, p = read_varint(c.payload, 0)
    h, p = read_varint(c.payload, p)
    crafted = write_varint(3000) + write_varint(3000) + c.payload[p:]
    from semarc.codec.image import check16
    got = coder.decode_batch([(c.payload, c.check), (crafted, check16(crafted))])
    assert isinstance(got[0], np.ndarray) and got[0].shape == (64, 64, 3)
    assert isinstance(got[1], ImageCodecError) and "corrupt entropy-coded string" in str(got[1])
    with pytest.raises(ImageCodecError, match="autoregressive"):
        ImageCoder("zoo:cheng2020-attn:1", zoo_pretrained=False)
