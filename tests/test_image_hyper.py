"""The scale-hyperprior image coder: symbols decode bit-exactly although the
decoder recomputes its entropy-table indexes from floats.

The test model is small and untrained, with its hyper-synthesis' last layer
set so that the predicted scales spread over the whole Gaussian table range
(many near table boundaries), which is where cross-machine decoding breaks."""

import math

import numpy as np
import pytest
import torch

from semarc.codec import latent_codecs
from semarc.codec import image_models
from semarc.codec.image import ImageCodecError, ImageCoder
from semarc.codec.imageio import read_image
from semarc.jobs.sample import skimage_data_dir


def spread_scales(net):
    """Set the hyper-synthesis' last layer so that the scales spread over the
    whole Gaussian table range (also used by ``test_image_ckbd.py``)."""
    last = [m for m in net.h_s if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.copy_(torch.logspace(math.log10(0.15), math.log10(30.0), last.bias.numel()))


def save_seed_point(path, config: dict, widen: float = 40, seed: int = 0):
    """A small untrained checkerboard point (scales spread, latent widened by
    ``widen``: an untrained latent rounds to zero almost everywhere) saved as
    ``path``, to seed runs that grow it. Returns ``path``."""
    torch.manual_seed(seed)
    net = image_models.build("checkerboard", config)
    spread_scales(net)
    with torch.no_grad():
        net.g_a[-1].weight.mul_(widen)
    image_models.save_checkpoint(path, "checkerboard", config, net, meta={})
    return path


@pytest.fixture(scope="module")
def hyper_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = image_models.build("hyperprior", {"N": 16, "M": 24})
    spread_scales(net)
    path = tmp_path_factory.mktemp("hyper") / "tiny-hyper.pt"
    image_models.save_checkpoint(path, "hyperprior", {"N": 16, "M": 24}, net, meta={})
    return str(path)


@pytest.fixture(scope="module")
def coder(hyper_ckpt):
    return ImageCoder(hyper_ckpt)


def _arrays():
    a = read_image((skimage_data_dir() / "astronaut.png").read_bytes())[:200, :260].copy()
    return [a, a[:, ::-1].copy(), a[::-1].copy(), a]


def _listed(coder, payload):
    return coder.arch.split(coder._parse(payload)[2])[1]


def test_roundtrip_sizes_and_batch_invariance(coder):
    assert_roundtrip(coder, "hyperprior")


def assert_roundtrip(coder, arch):
    """Odd sizes (1x1, 70x3) included; one image per call and a batch give the
    same bytes and pixels."""
    arrays = _arrays() + [np.full((1, 1, 3), 90, np.uint8), np.zeros((70, 3, 3), np.uint8)]
    one = [coder.encode_batch([a])[0] for a in arrays]
    many = coder.encode_batch(arrays)
    assert [c.payload for c in one] == [c.payload for c in many]
    d1 = [coder.decode_batch([(c.payload, c.check)])[0] for c in one]
    dn = coder.decode_batch([(c.payload, c.check) for c in many])
    for a, b, c in zip(arrays, d1, dn):
        assert isinstance(b, np.ndarray) and b.shape == a.shape and np.array_equal(b, c)
    assert coder.describe()["arch"] == arch


def test_range_tables_code_what_compressai_codes(coder):
    """The coder's cached tables (rows cut to their lengths) write CompressAI's
    ``GaussianConditional.compress`` bytes and read back its symbols, over
    every table and with symbols past a table's range (the escape path)."""
    gc = coder.net.gaussian_conditional
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, gc._quantized_cdf.shape[0], (1, 6000), generator=gen, dtype=torch.int32)
    sym = torch.round(torch.randn(idx.shape, generator=gen) * gc.scale_table[idx.long()] * 1.5)
    sym[0, :6] = torch.tensor([1000.0, -1000.0, 70000.0, -70000.0, 0.0, 1.0])
    ref = gc.compress(sym, idx)[0]
    tables = latent_codecs._Tables(gc)
    assert tables.encode(sym, idx) == ref
    got = tables.decode(ref, idx)
    assert got.dtype == torch.int32 and torch.equal(got, sym.int().reshape(-1))
    assert torch.equal(gc.decompress([ref], idx).int().reshape(-1), got)


def assert_encode_verification_refuses_bad_decodes(coder, monkeypatch):
    """The encode-time verification decodes the written strings: a range
    decoder that gets one symbol wrong, or a hyper-latent that does not
    decode to the encoder's bit for bit, fails the encode (``verify=False``
    still writes, which shows the check is what refuses)."""
    arrays = _arrays()[:2]
    assert len(coder.encode_batch(arrays)) == 2
    real = latent_codecs._Tables.decode

    def one_wrong(self, string, indexes):
        out = real(self, string, indexes)
        out[len(out) // 2] += 1
        return out

    monkeypatch.setattr(latent_codecs._Tables, "decode", one_wrong)
    with pytest.raises(ImageCodecError, match="did not decode back"):
        coder.encode_batch(arrays)
    assert len(coder.encode_batch(arrays, verify=False)) == 2
    monkeypatch.setattr(latent_codecs._Tables, "decode", real)
    real_z = latent_codecs._decode_bottleneck
    monkeypatch.setattr(latent_codecs, "_decode_bottleneck", lambda *a: real_z(*a) + 2.0 ** -20)
    with pytest.raises(ImageCodecError, match="hyper-latent did not decode back"):
        coder.encode_batch(arrays)


def test_encode_verification_refuses_bad_decodes(coder, monkeypatch):
    assert_encode_verification_refuses_bad_decodes(coder, monkeypatch)


def test_scales_near_boundaries_are_listed_and_decode_exactly(coder, monkeypatch):
    arrays = _arrays()[:2]
    plain = coder.encode_batch(arrays)
    ref = coder.decode_batch([(c.payload, c.check) for c in plain])
    monkeypatch.setattr(latent_codecs, "SCALE_MARGIN", 0.05)  # list every scale within 5% of a boundary
    wide = coder.encode_batch(arrays)
    assert all(len(_listed(coder, c.payload)) > 50 for c in wide)
    assert [c.check for c in wide] == [c.check for c in plain]  # same symbols, only the list differs
    back = coder.decode_batch([(c.payload, c.check) for c in wide])
    assert all(np.array_equal(a, b) for a, b in zip(ref, back))


def test_decoder_side_float_noise_is_absorbed_and_larger_noise_is_an_error(coder, monkeypatch):
    """Another machine computes h_s with different rounding: relative noise of
    1e-10 (far above float64's cross-device differences) decodes the same
    pixels; noise of 1e-3 never yields a silent wrong image."""
    assert_scale_noise_absorbed_or_refused(coder, monkeypatch)


def assert_scale_noise_absorbed_or_refused(coder, monkeypatch):
    """Decoder-side scales (every float64 scale the coder turns into a table
    index, in every pass) with relative noise of 1e-10 decode the same pixels;
    with 1e-3 every image is an error, never a silent wrong image."""
    arrays = _arrays()[:2]
    coded = coder.encode_batch(arrays)
    ref = coder.decode_batch([(c.payload, c.check) for c in coded])
    exact = coder.arch._table_indexes
    gen = torch.Generator().manual_seed(1)

    def noisy(scale):
        def f(s):
            return exact(s * (1 + scale * (2 * torch.rand(s.shape, generator=gen, dtype=s.dtype) - 1)))
        return f

    monkeypatch.setattr(coder.arch, "_table_indexes", noisy(1e-10))
    back = coder.decode_batch([(c.payload, c.check) for c in coded])
    assert all(np.array_equal(a, b) for a, b in zip(ref, back))
    monkeypatch.setattr(coder.arch, "_table_indexes", noisy(1e-3))
    back = coder.decode_batch([(c.payload, c.check) for c in coded])
    assert all(isinstance(b, ImageCodecError) for b in back), back


def test_list_absorbs_decoder_noise_below_half_the_margin(coder, monkeypatch):
    """The mechanism itself, at a scale a test can see: with a 5% margin,
    decoder-side scales off by up to 1% (relative) still decode exactly; with
    (almost) no margin the same noise is caught as an error."""
    arrays = _arrays()[:2]
    exact_h_s = coder.arch._h_s64
    gen = torch.Generator().manual_seed(2)

    def noisy(z):
        s = exact_h_s(z)
        return s * (1 + 0.01 * (2 * torch.rand(s.shape, generator=gen, dtype=s.dtype) - 1))

    for margin, exact in ((0.05, True), (1e-12, False)):
        monkeypatch.setattr(latent_codecs, "SCALE_MARGIN", margin)
        coded = coder.encode_batch(arrays)
        ref = coder.decode_batch([(c.payload, c.check) for c in coded])
        monkeypatch.setattr(coder.arch, "_h_s64", noisy)
        back = coder.decode_batch([(c.payload, c.check) for c in coded])
        monkeypatch.setattr(coder.arch, "_h_s64", exact_h_s)
        if exact:
            assert all(np.array_equal(a, b) for a, b in zip(ref, back))
        else:
            assert all(isinstance(b, ImageCodecError) for b in back), back


def test_corrupt_list_truncation_and_wrong_check_are_errors(coder, monkeypatch):
    from semarc.codec.varint import write_varint

    monkeypatch.setattr(latent_codecs, "SCALE_MARGIN", 0.05)
    (c,) = coder.encode_batch(_arrays()[:1])
    head = write_varint(260) + write_varint(200)
    z, listed, y = coder.arch.split(coder._parse(c.payload)[2])
    assert listed

    def body(entries):
        out, prev = [write_varint(len(z)), z, write_varint(len(entries))], -1
        for pos, k in entries:
            out.append(write_varint(pos - prev - 1) + bytes([k]))
            prev = pos
        return head + b"".join(out) + y

    assert body(listed) == c.payload  # the layout the docstring describes
    bad = [c.payload[: len(c.payload) // 2],                     # truncated y string
           head + write_varint(len(z)) + z[:3],                   # truncated z string
           head + write_varint(len(z)) + z + write_varint(5),    # list shorter than its count
           body([(listed[0][0], 255)] + listed[1:]),              # index past the last table
           body([(10 ** 7, 1)])]                                  # position past the latent
    res = coder.decode_batch([(p, c.check) for p in bad] + [(c.payload, c.check ^ 1)])
    assert all(isinstance(r, ImageCodecError) for r in res), res
    assert isinstance(coder.decode_batch([(c.payload, c.check)])[0], np.ndarray)


def test_bytes_identical_for_1_and_2_threads(hyper_ckpt, tmp_path):
    from conftest import assert_same_across_threads

    assert_same_across_threads(hyper_ckpt, tmp_path)


def test_factorized_point_seeds_a_hyperprior_run(tmp_path):
    from semarc.train import trainer as train

    f = image_models.build("factorized", {"N": 16, "M": 24})
    image_models.save_checkpoint(tmp_path / "f.pt", "factorized", {"N": 16, "M": 24}, f, meta={})
    init = image_models.load_checkpoint(tmp_path / "f.pt")
    h = image_models.build("hyperprior", {"N": 16, "M": 24})
    before = {k: v.clone() for k, v in h.state_dict().items()}
    msg = train.init_from(h, "hyperprior", init)
    assert "g_a/g_s only" in msg
    sd = h.state_dict()
    assert torch.equal(sd["g_a.0.weight"], init.net.state_dict()["g_a.0.weight"])
    assert torch.equal(sd["h_s.0.weight"], before["h_s.0.weight"])
    with pytest.raises(SystemExit, match="do not fit"):
        train.init_from(image_models.build("hyperprior", {"N": 8, "M": 24}), "hyperprior", init)


def test_shipped_hyperprior_points_roundtrip():
    points = {n: p for n, p in image_models.shipped_rate_points().items()
              if image_models.load_checkpoint(p).arch in ("hyperprior", "checkerboard")}
    assert {"semarc-h05s", "semarc-h10s"} <= set(points)
    arr = read_image((skimage_data_dir() / "astronaut.png").read_bytes())[:130, :190].copy()
    for name in points:
        c = ImageCoder(name)
        one = c.encode_batch([arr])[0]
        two = c.encode_batch([arr, arr[::-1].copy()])
        assert one.payload == two[0].payload
        back = c.decode_batch([(x.payload, x.check) for x in two])
        assert back[0].shape == arr.shape
        assert np.abs(back[0].astype(float) - arr).mean() < 25  # a trained codec, not noise
