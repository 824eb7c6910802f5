"""Decoder-only adversarial fine-tuning (train/adversarial.py, --adv-weight)."""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import pytest
import torch

from semarc.codec import image_models
from semarc.train import trainer as train
from semarc.train.adversarial import Adversary, ConditionalPatchDiscriminator
from test_train import _args as train_args
from test_train import photos  # noqa: F401  (the synthetic training photos fixture)

pytest.importorskip("compressai")


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    torch.manual_seed(1)
    cfg = {"N": 8, "M": 12}
    path = tmp_path_factory.mktemp("init") / "init.pt"
    image_models.save_checkpoint(path, "hyperprior", cfg, image_models.build("hyperprior", cfg), meta={})
    return str(path)


def _args(run, photos, init, *extra):
    return train_args(run, photos, "--arch", "hyperprior", "--train-part", "decoder", "--init", init, *extra)


def _state(run):
    return torch.load(run / "state.pt", map_location="cpu", weights_only=False)


def _assert_equal_tree(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tree(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_an_adversarial_decoder_run_keeps_the_bytes_and_resumes_exactly(tmp_path, photos, init):
    """The exported point writes --init's bytes (only g_s changed); the run logs
    the discriminator (and the decoder's adversarial term once the warm-up is
    over); stopped after every step and resumed, it ends in the same state,
    discriminator and its optimiser included, as one uninterrupted run."""
    from PIL import Image

    from semarc.codec.image import ImageCoder

    torch.set_num_threads(1)
    common = ["--steps", "6", "--adv-weight", "0.5", "--adv-warmup", "2"]
    train.train(_args(tmp_path / "a", photos, init, *common))
    for _ in range(6):
        train.train(_args(tmp_path / "b", photos, init, *common, "--max-minutes", "1e-9"))
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a["step"] == 6 and set(a["adversary"]) == {"disc", "opt"}
    _assert_equal_tree({k: a[k] for k in ("model", "opt", "adversary", "gen", "torch_rng")},
                       {k: b[k] for k in ("model", "opt", "adversary", "gen", "torch_rng")})

    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["adv_weight"] == 0.5 and cfg["adv_warmup"] == 2 and "disc_lr" not in cfg
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    assert "adv" not in log[0] and all(r["adv"] > 0 for r in log[1:])
    assert all(0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1 and r["d_loss"] > 0 for r in log)

    out = tmp_path / "adv.pt"
    train.export(tmp_path / "a", str(out), argparse.Namespace(command_line="test"))
    m0, m1 = image_models.load_checkpoint(init), image_models.load_checkpoint(out)
    s0, s1 = m0.net.state_dict(), m1.net.state_dict()
    assert s0.keys() == s1.keys()  # the discriminator is not part of the codec
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert changed and all(k.startswith("g_s.") for k in changed), changed
    assert m1.meta["train_config"]["adv_weight"] == 0.5
    img = np.asarray(Image.open(sorted(glob.glob(photos))[0]).convert("RGB"))
    e0, e1 = ImageCoder(init).encode_batch([img])[0], ImageCoder(str(out)).encode_batch([img])[0]
    assert e0.payload == e1.payload and e0.check == e1.check


def test_the_warmup_leaves_the_decoder_as_its_control_and_the_term_then_moves_it(tmp_path, photos, init):
    """While the discriminator trains alone, the decoder's updates are those of
    the same run without it (same crops, same RNG: the discriminator is drawn
    from its own seed); with the term on from step 0 the decoder differs."""
    torch.set_num_threads(1)
    train.train(_args(tmp_path / "control", photos, init, "--steps", "4"))
    train.train(_args(tmp_path / "warm", photos, init, "--steps", "4", "--adv-weight", "0.5", "--adv-warmup", "4"))
    train.train(_args(tmp_path / "on", photos, init, "--steps", "4", "--adv-weight", "0.5"))
    control, warm, on = (_state(tmp_path / r) for r in ("control", "warm", "on"))
    _assert_equal_tree(control["model"], warm["model"])
    assert torch.equal(control["gen"], warm["gen"]) and torch.equal(control["torch_rng"], warm["torch_rng"])
    assert any(not torch.equal(control["model"][k], on["model"][k]) for k in control["model"] if k.startswith("g_s."))


def test_the_discriminator_tells_real_from_decoded_and_its_term_trains_only_the_decoder():
    """A few discriminator steps separate sharp crops from blurred ones (each
    with its latent); the decoder's term then prefers the real crops, and its
    gradient reaches the image, never the discriminator's weights."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    x_hat = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)  # the "decodes": blurred copies
    y_hat = torch.randn(4, 12, 4, 4)
    adv = Adversary(12, weight=1.0, warmup=0, lr=2e-3, seed=0, device=torch.device("cpu"))
    first = adv.discriminator_step(x, x_hat, y_hat)
    for _ in range(30):
        last = adv.discriminator_step(x, x_hat, y_hat)
    assert first["finite"] and last["finite"]
    assert float(last["d_loss"]) < float(first["d_loss"]) and float(last["d_real"]) > 0.5 > float(last["d_fake"])
    adv.opt.zero_grad(set_to_none=True)
    fake = x_hat.clone().requires_grad_(True)
    g_fake = adv.generator_loss(fake, y_hat)
    assert float(g_fake) > float(adv.generator_loss(x, y_hat))
    g_fake.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.disc.parameters())
    assert all(p.requires_grad for p in adv.disc.parameters())  # and the next discriminator step trains them

def test_the_discriminator_scores_patches_of_any_size():
    """One logit per overlapping patch, for crops of any size (the latent is
    upsampled 16x and trimmed to the image)."""
    d = ConditionalPatchDiscriminator(12)
    for h, w in ((64, 64), (80, 112)):
        out = d(torch.rand(2, 3, h, w), torch.randn(2, 12, -(-h // 16), -(-w // 16)))
        assert out.shape[:2] == (2, 1) and out.shape[2] == h // 8 - 2 and out.shape[3] == w // 8 - 2


@pytest.mark.parametrize("extra, message", [
    (["--train-part", "all", "--adv-weight", "0.1"], "--train-part decoder"),
    (["--adv-warmup", "10"], "--adv-weight W > 0"),
    (["--disc-lr", "1e-3"], "--adv-weight W > 0"),
])
def test_adversarial_options_are_refused_outside_an_adversarial_decoder_run(tmp_path, photos, init, extra, message):
    with pytest.raises(SystemExit, match=message):
        train.train(_args(tmp_path / "r", photos, init, "--steps", "1", *extra))
