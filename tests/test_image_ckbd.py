"""The checkerboard-context image coder: two entropy-decoding passes whose
second pass takes its table indexes from float64 computations over the
decoded anchors, decoded bit-exactly with the same margin-and-list rule as the
scale hyperprior (``test_image_hyper.py``).

The test model is small and untrained; its hyper-synthesis spreads the scales
over the whole Gaussian table range and its context is made to matter (the
last layer of ``entropy_params`` is not zero), so that the non-anchor indexes
really depend on the anchors."""

import argparse
import json

import numpy as np
import pytest
import torch

from semarc.codec import image as image_mod
from semarc.codec import latent_codecs
from semarc.codec import image_models
from semarc.train import trainer as train
from semarc.codec.image import ImageCodecError, ImageCoder
from test_image_hyper import (_arrays, assert_encode_verification_refuses_bad_decodes, assert_roundtrip,
                               assert_scale_noise_absorbed_or_refused, spread_scales)
from test_train import _args, photos  # noqa: F401  (the synthetic training photos fixture)

CFG = {"N": 16, "M": 24}


@pytest.fixture(scope="module")
def ckbd_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = image_models.build("checkerboard", CFG)
    spread_scales(net)
    with torch.no_grad():
        net.entropy_params[-1].weight.normal_(0, 0.05)
        net.g_a[-1].weight.mul_(40)  # an untrained latent rounds to zero almost everywhere: widen it
    path = tmp_path_factory.mktemp("ckbd") / "tiny-ckbd.pt"
    image_models.save_checkpoint(path, "checkerboard", CFG, net, meta={})
    return str(path)


@pytest.fixture(scope="module")
def coder(ckbd_ckpt):
    return ImageCoder(ckbd_ckpt)


def test_roundtrip_sizes_and_batch_invariance(coder):
    assert_roundtrip(coder, "checkerboard")


def _latents(coder):
    net = coder.net
    x = torch.from_numpy(_arrays()[0][:128, :192].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = torch.round(net.g_a(x))
        z_hat = net.entropy_bottleneck.quantize(net.h_a(y.abs()), "dequantize",
                                                net.entropy_bottleneck._get_medians())
    return y, z_hat


def test_coder_scales_are_the_models_in_float64(coder):
    """The coder's sparse float64 context and per-pass entropy_params compute
    the model's (dense, float32) ``scales``."""
    y, z_hat = _latents(coder)
    with torch.no_grad():
        ref = coder.net.scales(coder.net.h_s(z_hat), y).double()
        hyper = coder.arch._h_s64(z_hat.double())
        a = coder.arch._anchor_grid(y)
        bounds = coder.arch._bounds
        for sel, known in ((a, None), (~a, y)):
            idx, _ = coder.arch._checkerboard_indexes(hyper, known, sel)
            # the model's scale at each position lies in the table interval the coder picked
            s = ref[..., sel]
            lo = torch.where(idx > 0, bounds[(idx - 1).clamp(min=0).long()], torch.zeros_like(s))
            hi = torch.where(idx < len(bounds), bounds[idx.clamp(max=len(bounds) - 1).long()],
                             torch.full_like(s, float("inf")))
            inside = (s >= lo * (1 - 1e-5)) & (s <= hi * (1 + 1e-5))
            assert bool(inside.all())


def test_non_anchor_indexes_depend_on_the_decoded_anchors(coder):
    """The second pass is a real context: other anchors give other non-anchor
    indexes (the anchors' own never depend on the latent)."""
    y, z_hat = _latents(coder)
    with torch.no_grad():
        hyper = coder.arch._h_s64(z_hat.double())
        a = coder.arch._anchor_grid(y)
        i1, _ = coder.arch._checkerboard_indexes(hyper, y, ~a)
        i0, _ = coder.arch._checkerboard_indexes(hyper, torch.zeros_like(y), ~a)
    assert (i1 != i0).float().mean() > 0.05


def test_scale_float_noise_is_absorbed_and_larger_noise_is_an_error(coder, monkeypatch):
    """Another machine computes the scales of either pass with different
    rounding: relative noise of 1e-10 decodes the same pixels; 1e-3 never
    yields a silent wrong image."""
    assert_scale_noise_absorbed_or_refused(coder, monkeypatch)


def test_listed_indexes_cover_both_passes(coder, monkeypatch):
    """With a 5% margin, many anchor and non-anchor indexes are listed; the
    symbols are the same as without the list and decode to the same pixels."""
    arrays = _arrays()[:2]
    plain = coder.encode_batch(arrays)
    ref = coder.decode_batch([(c.payload, c.check) for c in plain])
    monkeypatch.setattr(latent_codecs, "SCALE_MARGIN", 0.05)
    wide = coder.encode_batch(arrays)
    assert [c.check for c in wide] == [c.check for c in plain]
    for c in wide:
        listed = coder.arch.split(coder._parse(c.payload)[2])[1]
        h, w = 256 // 16, 320 // 16  # padded 200x260 -> latent grid
        anchor = [((p % (h * w)) // w + (p % w)) % 2 == 0 for p, _ in listed]
        assert sum(anchor) > 20 and len(anchor) - sum(anchor) > 20
    back = coder.decode_batch([(c.payload, c.check) for c in wide])
    assert all(np.array_equal(a, b) for a, b in zip(ref, back))


def test_encode_verification_refuses_bad_decodes(coder, monkeypatch):
    """Both passes' strings are decoded back at encode time (the tables are
    the encoder's, reused once z_hat decodes bit for bit)."""
    assert_encode_verification_refuses_bad_decodes(coder, monkeypatch)


def test_corrupt_and_truncated_bodies_are_errors(coder):
    (c,) = coder.encode_batch(_arrays()[:1])
    z, listed, ya, yb = coder.arch.split(coder._parse(c.payload)[2])
    assert ya and yb
    bad = [c.payload[: len(c.payload) // 2],  # cut inside a string
           c.payload[: len(c.payload) - len(yb) - len(ya) // 2],  # anchor string shorter than its length
           c.payload[:-3] + bytes(b ^ 0x5A for b in c.payload[-3:])]  # flipped bytes in the second pass
    res = coder.decode_batch([(p, c.check) for p in bad] + [(c.payload, c.check ^ 1)])
    assert all(isinstance(r, ImageCodecError) for r in res), res
    assert isinstance(coder.decode_batch([(c.payload, c.check)])[0], np.ndarray)


def test_bytes_identical_for_1_and_2_threads(ckbd_ckpt, tmp_path):
    from conftest import assert_same_across_threads

    assert_same_across_threads(ckbd_ckpt, tmp_path)


def _hyperprior_init(tmp_path, seed):
    """A small untrained hyperprior point (scales spread, latent widened) to seed entropy runs."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    init = tmp_path / "h.pt"
    h = image_models.build("hyperprior", CFG)
    spread_scales(h)
    with torch.no_grad():
        h.g_a[-1].weight.mul_(8)
    image_models.save_checkpoint(init, "hyperprior", CFG, h, meta={})
    return init


def test_entropy_part_keeps_the_pixels_and_trains_the_context(tmp_path, photos):
    """--train-part entropy from a hyperprior point into a checkerboard run: the
    transforms stay the point's (the exported point decodes the same pixels
    from its own, different, bytes), the context and hyper-transforms learn,
    and the logged rate is the rounded latent's."""
    from PIL import Image

    init = _hyperprior_init(tmp_path, seed=1)
    run = tmp_path / "ent"
    common = ["--arch", "checkerboard", "--train-part", "entropy", "--N", "16", "--M", "24", "--lr", "1e-3"]
    with pytest.raises(SystemExit, match="--init"):
        train.train(_args(tmp_path / "no-init", photos, *common, "--steps", "1"))
    train.train(_args(run, photos, *common, "--init", str(init), "--steps", "6", "--log-every", "3",
                      "--lr-fresh", "1e-2"))
    groups = torch.load(run / "state.pt", map_location="cpu", weights_only=False)["opt"]["param_groups"]
    assert len(groups[1]["params"]) == 8  # context and entropy_params (weights, biases): what --init lacks
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    out = tmp_path / "ent.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    a, b = image_models.load_checkpoint(init), image_models.load_checkpoint(out)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(("g_a.", "g_s.")))
    assert not torch.equal(sb["entropy_params.4.weight"], torch.zeros_like(sb["entropy_params.4.weight"]))
    assert not torch.equal(sa["h_s.0.weight"], sb["h_s.0.weight"])
    assert b.arch == "checkerboard" and b.meta["train_config"]["train_part"] == "entropy"
    assert "psnr" not in b.meta["last_log"] and b.meta["last_log"]["bpp"] > 0
    img = np.asarray(Image.open(sorted(__import__("glob").glob(photos))[0]).convert("RGB"))[:256, :320].copy()
    ca, cb = ImageCoder(str(init)), ImageCoder(str(out))
    ea, eb = ca.encode_batch([img])[0], cb.encode_batch([img])[0]
    assert ea.payload != eb.payload  # other hyper-latent and context: other bytes for the same latent
    assert np.array_equal(ca.decode_batch([(ea.payload, ea.check)])[0], cb.decode_batch([(eb.payload, eb.check)])[0])
    with pytest.raises(SystemExit, match="rate alone"):
        train.train(_args(tmp_path / "lp", photos, *common, "--init", str(init), "--lpips-weight", "0.1"))
    with pytest.raises(SystemExit, match="factorized"):
        train.train(_args(tmp_path / "f", photos, "--arch", "factorized", "--train-part", "entropy",
                          "--init", str(init), "--steps", "1"))


def test_entropy_part_from_whole_photo_latents(tmp_path, photos):
    """--entropy-data latents: the entropy model learns from windows of the
    frozen analysis transform's latents of whole photos (scales 1 and 0.6),
    exactly the latents the coder computes for those photos; they are
    computed once per run and cached, a resumed run continues exactly as an
    uninterrupted one, and only an entropy-part run takes the option."""
    import glob

    from PIL import Image

    init = _hyperprior_init(tmp_path, seed=2)
    common = ["--arch", "checkerboard", "--train-part", "entropy", "--entropy-data", "latents",
              "--N", "16", "--M", "24", "--init", str(init), "--lr-fresh", "1e-2", "--lr-drop-step", "100"]
    a, b = tmp_path / "a", tmp_path / "b"
    train.train(_args(a, photos, *common, "--steps", "3"))
    train.train(_args(a, photos, *common, "--steps", "6"))  # resumed
    train.train(_args(b, photos, *common, "--steps", "6"))  # in one go
    sa = torch.load(a / "state.pt", map_location="cpu", weights_only=False)["model"]
    sb = torch.load(b / "state.pt", map_location="cpu", weights_only=False)["model"]
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    assert not torch.equal(sa["entropy_params.4.weight"], torch.zeros_like(sa["entropy_params.4.weight"]))
    assert json.loads((a / "config.json").read_text())["entropy_data"] == "latents"

    paths = sorted(glob.glob(photos))
    lat = torch.load(a / "latents.pt", map_location="cpu", weights_only=True)["latents"]
    assert len(lat) == 2 * len(paths)
    net = image_models.load_checkpoint(init).net
    img = np.asarray(Image.open(paths[0]).convert("RGB")).copy()
    x = image_mod._pad(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, 64)
    with torch.no_grad():
        assert torch.equal(lat[0], net.g_a(x)[0])  # the whole photo, padded as the coder pads it
    assert lat[1].shape[-2:] == (64 // 16, 128 // 16)  # 96x112 at 0.6 -> 58x67, padded to 64x128

    y = train.sample_latents(lat, 5, 64, torch.Generator().manual_seed(0))
    assert y.shape == (5, CFG["M"], 4, 4)
    loss, bpp, mse, _ = train.entropy_loss(net, y=y)
    assert mse is None and 0 < float(bpp) < 50
    with pytest.raises(SystemExit, match="--entropy-data latents is for --train-part entropy"):
        train.train(_args(tmp_path / "d", photos, "--arch", "hyperprior", "--N", "16", "--M", "24",
                          "--train-part", "decoder", "--entropy-data", "latents", "--init", str(init)))


@pytest.mark.parametrize("arch", ["hyperprior", "checkerboard"])
def test_rounded_hyper_input_is_encoder_side_only(tmp_path, arch):
    """``hyper_input: rounded``: the hyper-analysis reads |round(y)|, so the
    encoder writes another hyper-latent (other bytes) for the same latent; the
    decoder, which never runs h_a, is unchanged and decodes the same pixels
    bit-exactly (batch sizes and odd sizes as every point). The choice is part
    of the checkpoint's configuration, hence of its fingerprint."""
    torch.manual_seed(0)
    net = image_models.build(arch, CFG)
    spread_scales(net)
    with torch.no_grad():
        net.g_a[-1].weight.mul_(40)
        net.h_a[0].weight.mul_(30)  # make the hyper-latent see the difference
    plain, rounded = tmp_path / "plain.pt", tmp_path / "rounded.pt"
    image_models.save_checkpoint(plain, arch, CFG, net, meta={})
    fp = image_models.save_checkpoint(rounded, arch, {**CFG, "hyper_input": "rounded"}, net, meta={})
    a, b = ImageCoder(str(plain)), ImageCoder(str(rounded))
    assert b.net.hyper_input == "rounded" and a.net.hyper_input == "latent"
    assert fp != image_models.load_checkpoint(plain).fingerprint
    assert_roundtrip(b, arch)
    imgs = _arrays()[:2]
    ea, eb = a.encode_batch(imgs), b.encode_batch(imgs)
    assert any(x.payload != y.payload for x, y in zip(ea, eb))
    da = a.decode_batch([(c.payload, c.check) for c in ea])
    db = b.decode_batch([(c.payload, c.check) for c in eb])
    assert all(np.array_equal(x, y) for x, y in zip(da, db))
    with pytest.raises(ValueError, match="hyper_input"):
        image_models.build("factorized", {**CFG, "hyper_input": "rounded"})
