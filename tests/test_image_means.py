"""The checkerboard coder with means (``means: hyper``): a mean per latent
element from the hyper-latent, symbols ``round(y - mean)``, the mean added
back at decode. The symbols and tables stay exact (the context reads the
integer symbols, never the means); the means reach only the synthesis.

The test model is small and untrained, its means head and signed
hyper-input made to matter (their zero-initialised last layers are set)."""

import argparse
import glob

import numpy as np
import pytest
import torch

from semarc.codec import image_models
from semarc.codec.image import ImageCodecError, ImageCoder
from semarc.train import trainer as train
from test_image_hyper import (_arrays, assert_encode_verification_refuses_bad_decodes, assert_roundtrip,
                              assert_scale_noise_absorbed_or_refused, save_seed_point, spread_scales)
from test_train import _args, photos  # noqa: F401  (the synthetic training photos fixture)

CFG = {"N": 16, "M": 24}
MEANS = {**CFG, "means": "hyper"}


def _zero_mean_seed(tmp_path, widen: float):
    """A small untrained zero-mean checkerboard point saved as ``tmp_path/seed.pt``, to seed means runs."""
    return save_seed_point(tmp_path / "seed.pt", CFG, widen)


def _means_net(seed: int = 0):
    torch.manual_seed(seed)
    net = image_models.build("checkerboard", MEANS)
    spread_scales(net)
    with torch.no_grad():
        net.entropy_params[-1].weight.normal_(0, 0.05)
        net.g_a[-1].weight.mul_(40)  # an untrained latent rounds to zero almost everywhere: widen it
        net.h_m[-1].weight.normal_(0, 0.5)
        net.h_m[-1].bias.uniform_(-2, 2)
        net.h_sign.weight.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def means_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("means") / "tiny-means.pt"
    image_models.save_checkpoint(path, "checkerboard", MEANS, _means_net(), meta={})
    return str(path)


@pytest.fixture(scope="module")
def coder(means_ckpt):
    return ImageCoder(means_ckpt)


def test_roundtrip_sizes_and_batch_invariance(coder):
    assert_roundtrip(coder, "checkerboard")
    assert "means" in coder.describe()


def test_symbols_are_the_latent_minus_its_mean(coder):
    """The coded symbols are ``round(y - h_m(z_hat))`` and the decoded latent
    is those symbols plus the same means: not integers, and not the zero-mean
    ``round(y)``."""
    net = coder.net
    (c,) = coder.encode_batch(_arrays()[:1])
    x = torch.from_numpy(_arrays()[0]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        xp = torch.nn.functional.pad(x, (0, 320 - 260, 0, 256 - 200), mode="replicate")
        y = net.g_a(xp)
        z_hat = net.entropy_bottleneck.quantize(image_models.hyper_analysis(net, y), "dequantize",
                                                net.entropy_bottleneck._get_medians())
        mu = net.h_m(z_hat)
    parts = coder.arch.split(coder._parse(c.payload)[2])
    y_hat, sym = coder.arch.entropy_decode(parts, 256, 320)
    n_z = z_hat.numel() * 4
    y_sym = torch.from_numpy(np.frombuffer(sym[n_z:], dtype=np.int32).copy()).view(y.shape).float()
    assert torch.equal(y_sym, torch.round(y - mu))
    assert torch.allclose(y_hat, y_sym + mu)
    assert (y_hat != torch.round(y_hat)).float().mean() > 0.9
    assert (y_sym != torch.round(y)).float().mean() > 0.2  # the means change what is coded


def test_scale_float_noise_is_absorbed_and_larger_noise_is_an_error(coder, monkeypatch):
    assert_scale_noise_absorbed_or_refused(coder, monkeypatch)


def test_encode_verification_refuses_bad_decodes(coder, monkeypatch):
    assert_encode_verification_refuses_bad_decodes(coder, monkeypatch)


def test_corrupt_bodies_are_errors(coder):
    (c,) = coder.encode_batch(_arrays()[:1])
    bad = [c.payload[: len(c.payload) // 2], c.payload[:-3] + bytes(b ^ 0x5A for b in c.payload[-3:])]
    res = coder.decode_batch([(p, c.check) for p in bad] + [(c.payload, c.check ^ 1)])
    assert all(isinstance(r, ImageCodecError) for r in res), res
    assert isinstance(coder.decode_batch([(c.payload, c.check)])[0], np.ndarray)


def test_bytes_identical_for_1_and_2_threads(means_ckpt, tmp_path):
    from conftest import assert_same_across_threads

    assert_same_across_threads(means_ckpt, tmp_path)


def test_mixed_forward_decodes_what_the_coder_decodes(means_ckpt, photos):
    """--quant mixed with means: the synthesis in training reads exactly the
    latent the coder decodes (symbols plus means), so its x_hat is the coder's
    decode up to the 8-bit output; the rate keeps the noise proxy, and the
    gradient reaches the means head and the signed hyper-input."""
    torch.set_num_threads(1)
    net = image_models.load_checkpoint(means_ckpt).net
    imgs = train.load_photos(sorted(glob.glob(photos)))
    x = train.sample_batch(imgs, 1, 64, torch.Generator().manual_seed(0))
    net.train()
    x_hat, likelihoods = train._mixed_forward(net, x)
    coder = ImageCoder(means_ckpt)
    arr = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    (c,) = coder.encode_batch([arr])
    dec = coder.decode_batch([(c.payload, c.check)])[0]
    x8 = (x_hat.detach()[0].clamp(0, 1).permute(1, 2, 0) * 255).round().numpy()
    # the coder reads the 8-bit image, training the float one: equal latents almost everywhere
    assert np.abs(x8 - dec.astype(np.float64)).mean() < 0.5
    net.zero_grad()
    loss, bpp, _, _ = train.rd_loss(net, x, 0.01, quant="mixed")
    loss.backward()
    assert float(net.h_m[-1].weight.grad.abs().sum()) > 0
    assert float(net.h_sign.weight.grad.abs().sum()) > 0
    assert 0 < float(bpp.detach()) < 50 and len(likelihoods) == 2


def test_a_zero_mean_point_seeds_a_means_run_that_starts_as_that_point(tmp_path, photos):
    """--means hyper --init ZERO_MEAN_POINT: the means start at zero, so the
    run's first state codes the seed's latent symbols and decodes its pixels
    exactly; the signed hyper-input starts small but not at zero (a sign in z
    is what lets the means learn), so at most the hyper-latent's bytes differ.
    The new parts train at --lr-fresh, learn, and the exported point records
    the choice (another fingerprint) and round-trips."""
    init = _zero_mean_seed(tmp_path, widen=40)
    loaded = image_models.load_checkpoint(init)
    net = image_models.build("checkerboard", MEANS)
    note = train.init_from(net, "checkerboard", loaded)
    assert "means start at zero" in note
    assert torch.equal(net.h_m[0].weight, loaded.net.h_s[0].weight)
    assert 0 < float(net.h_sign.weight.detach().abs().max()) < 0.05 and not net.h_m[-1].weight.any()
    start = tmp_path / "start.pt"
    image_models.save_checkpoint(start, "checkerboard", MEANS, net, meta={})
    imgs = _arrays()[:2]
    a, b = ImageCoder(str(init)), ImageCoder(str(start))
    ea, eb = a.encode_batch(imgs), b.encode_batch(imgs)
    for p, q in zip(ea, eb):  # the same latent (z may round otherwise here and there)
        pa, pb = (c.arch.split(c._parse(x.payload)[2]) for c, x in ((a, p), (b, q)))
        ya = a.arch.entropy_decode(pa, 256, 320)[0]
        yb = b.arch.entropy_decode(pb, 256, 320)[0]
        assert torch.equal(ya, yb)
    assert all(np.array_equal(p, q) for p, q in zip(a.decode_batch([(c.payload, c.check) for c in ea]),
                                                    b.decode_batch([(c.payload, c.check) for c in eb])))
    assert a.model.fingerprint != b.model.fingerprint

    run = tmp_path / "ms"
    common = ["--arch", "checkerboard", "--N", "16", "--M", "24", "--quant", "mixed", "--means", "hyper",
              "--init", str(init), "--lr-fresh", "1e-2"]
    train.train(_args(run, photos, *common, "--steps", "4"))
    st = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    assert len(st["opt"]["param_groups"][1]["params"]) == 8  # h_sign (2) and h_m (6): what --init lacks
    assert not torch.equal(st["model"]["h_m.4.weight"], torch.zeros_like(st["model"]["h_m.4.weight"]))
    assert not torch.equal(st["model"]["h_sign.weight"], torch.zeros_like(st["model"]["h_sign.weight"]))
    out = tmp_path / "ms.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    p = image_models.load_checkpoint(out)
    assert p.config["means"] == "hyper" and p.net.h_m is not None
    assert_roundtrip(ImageCoder(str(out)), "checkerboard")

    with pytest.raises(SystemExit, match="means seeds only"):  # a means point cannot seed a zero-mean run
        train.train(_args(tmp_path / "back", photos, "--arch", "checkerboard", "--N", "16", "--M", "24",
                          "--quant", "mixed", "--init", str(out), "--steps", "1"))
    with pytest.raises(SystemExit, match="--means hyper is for --arch checkerboard"):
        train.train(_args(tmp_path / "h", photos, "--arch", "hyperprior", "--means", "hyper", "--steps", "1"))
    for arch in ("factorized", "hyperprior"):
        with pytest.raises(ValueError, match="means"):
            image_models.build(arch, {**CFG, "means": "hyper"})


def test_entropy_part_trains_the_means_on_the_exact_rate(tmp_path, photos):
    """--train-part entropy with means: the loss's value is the exact rate of
    the rounded symbols (flat in the means), yet the means get a gradient (the
    noise proxy's, through a zero-valued term) and learn; the transforms stay
    the seed's."""
    torch.set_num_threads(1)
    init = _zero_mean_seed(tmp_path, widen=8)

    net = image_models.build("checkerboard", MEANS)
    train.init_from(net, "checkerboard", image_models.load_checkpoint(init))
    with torch.no_grad():
        net.h_m[-1].weight.normal_(0, 0.05)
    y = torch.randn(2, CFG["M"], 4, 4) * 3
    loss, bpp, mse, _ = train.entropy_loss(net, y=y)
    assert mse is None and float(loss) == pytest.approx(float(bpp), rel=1e-6)
    loss.backward()
    assert float(net.h_m[-1].weight.grad.abs().sum()) > 0 and float(net.h_sign.weight.grad.abs().sum()) > 0

    run = tmp_path / "ent"
    train.train(_args(run, photos, "--arch", "checkerboard", "--N", "16", "--M", "24", "--train-part", "entropy",
                      "--entropy-data", "latents", "--means", "hyper", "--init", str(init), "--lr-fresh", "1e-2",
                      "--steps", "6"))
    sa, sb = image_models.load_checkpoint(init).net.state_dict(), _state_model(run)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(("g_a.", "g_s.")))
    assert not torch.equal(sb["h_m.4.weight"], torch.zeros_like(sb["h_m.4.weight"]))


def _state_model(run):
    return torch.load(run / "state.pt", map_location="cpu", weights_only=False)["model"]
