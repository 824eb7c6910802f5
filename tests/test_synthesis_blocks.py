"""A deeper synthesis transform (``synthesis_blocks``: residual blocks after
the synthesis' first upsampling), grown from a trained point: the blocks
start as the identity, so the grown network writes the seed's bytes and
decodes its pixels until it trains; the checkpoint records the blocks, and
a point without them cannot be read as one with them, nor the reverse."""

import argparse

import numpy as np
import pytest
import torch

from semarc.codec import image_models
from semarc.codec.image import ImageCoder
from semarc.train import trainer as train
from test_image_hyper import _arrays, assert_roundtrip, save_seed_point
from test_train import _args, photos  # noqa: F401  (the synthetic training photos fixture)

CFG = {"N": 16, "M": 24, "means": "hyper"}


def assert_same_bytes_and_pixels(a: ImageCoder, b: ImageCoder) -> None:
    """Two coders write the same bytes for the same images and decode the same pixels from them."""
    imgs = _arrays()[:2]
    ea, eb = a.encode_batch(imgs), b.encode_batch(imgs)
    assert [c.payload for c in ea] == [c.payload for c in eb]
    da = a.decode_batch([(c.payload, c.check) for c in ea])
    db = b.decode_batch([(c.payload, c.check) for c in eb])
    assert all(np.array_equal(p, q) for p, q in zip(da, db))


@pytest.fixture()
def seed(tmp_path):
    """A small untrained checkerboard point with means, as ``seed.pt``."""
    return save_seed_point(tmp_path / "seed.pt", CFG)


def test_a_grown_point_starts_as_its_seed_bytes_and_pixels(seed, tmp_path):
    loaded = image_models.load_checkpoint(seed)
    net = image_models.build("checkerboard", {**CFG, "synthesis_blocks": 2})
    assert len(net.g_s.blocks) == 2
    assert "start as the identity" in train.init_from(net, "checkerboard", loaded)
    # the seed's layers keep their names: every tensor of the seed is in the grown network, unchanged
    grown = net.state_dict()
    assert all(torch.equal(v, grown[k]) for k, v in loaded.net.state_dict().items())
    start = tmp_path / "start.pt"
    image_models.save_checkpoint(start, "checkerboard", {**CFG, "synthesis_blocks": 2}, net, meta={})
    a, b = ImageCoder(str(seed)), ImageCoder(str(start))
    assert b.model.config["synthesis_blocks"] == 2 and a.model.fingerprint != b.model.fingerprint
    assert_same_bytes_and_pixels(a, b)
    # a block that has learned changes the pixels, not the bytes
    with torch.no_grad():
        net.g_s.blocks[0].conv2.weight.normal_(0, 0.05)
    y = torch.randn(1, 24, 4, 5)
    assert not torch.allclose(net.g_s(y), loaded.net.g_s(y))


def test_a_run_grows_trains_and_exports_the_blocks(seed, tmp_path, photos):  # noqa: F811
    run = tmp_path / "g"
    common = ["--arch", "checkerboard", "--N", "16", "--M", "24", "--quant", "mixed", "--means", "hyper",
              "--init", str(seed)]
    train.train(_args(run, photos, *common, "--synthesis-blocks", "2", "--steps", "4"))
    st = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    assert sum(k.startswith("g_s.blocks.") for k in st["model"]) == 8  # 2 blocks x 2 convolutions x (weight, bias)
    assert st["model"]["g_s.blocks.1.conv2.weight"].any()  # started at zero, and learned
    out = tmp_path / "g.pt"
    train.export(run, str(out), argparse.Namespace(command_line="test"))
    p = image_models.load_checkpoint(out)
    assert p.config["synthesis_blocks"] == 2 and len(p.net.g_s.blocks) == 2
    assert_roundtrip(ImageCoder(str(out)), "checkerboard")

    # a grown point seeds a run with as many blocks or more, never one with fewer
    train.train(_args(tmp_path / "more", photos, *common[:-1], str(out), "--synthesis-blocks", "3", "--steps", "1"))
    with pytest.raises(SystemExit, match="synthesis blocks"):
        train.train(_args(tmp_path / "fewer", photos, *common[:-1], str(out), "--steps", "1"))
    # a resumed run keeps its blocks: another count is another run
    with pytest.raises(SystemExit, match="another configuration"):
        train.train(_args(run, photos, *common, "--synthesis-blocks", "1", "--steps", "6"))


@pytest.mark.parametrize("key,most", [("synthesis_blocks", image_models.MAX_SYNTHESIS_BLOCKS),
                                      ("fine_synthesis_blocks", image_models.MAX_FINE_SYNTHESIS_BLOCKS)])
def test_blocks_are_for_the_checkerboard_and_bounded(key, most, photos, tmp_path):  # noqa: F811
    flag = "--" + key.replace("_", "-")
    for arch in ("factorized", "hyperprior"):
        with pytest.raises(ValueError, match=f"^{key} "):
            image_models.build(arch, {"N": 16, "M": 24, key: 1})
    for bad in (-1, most + 1, 1.5):
        with pytest.raises(ValueError, match=f"^{key} "):
            image_models.build("checkerboard", {"N": 16, "M": 24, key: bad})
    with pytest.raises(SystemExit, match=f"{flag} is for --arch checkerboard"):
        train.train(_args(tmp_path / "h", photos, "--arch", "hyperprior", flag, "1", "--steps", "1"))
    with pytest.raises(SystemExit, match=f"{flag} is for --arch checkerboard"):
        train.train(_args(tmp_path / "c", photos, "--arch", "checkerboard", flag, str(most + 1), "--steps", "1"))


def test_fine_blocks_run_at_a_quarter_of_the_side_and_grow_from_a_coarse_point(seed, tmp_path, photos):  # noqa: F811
    # a point with two blocks at 1/8 grows one at 1/4: it starts as the identity, so the bytes and pixels are its seed's
    coarse = tmp_path / "coarse.pt"
    net = image_models.build("checkerboard", {**CFG, "synthesis_blocks": 2})
    train.init_from(net, "checkerboard", image_models.load_checkpoint(seed))
    with torch.no_grad():
        net.g_s.blocks[1].conv2.weight.normal_(0, 0.05)  # a coarse block that has learned
    image_models.save_checkpoint(coarse, "checkerboard", {**CFG, "synthesis_blocks": 2}, net, meta={})
    both = {**CFG, "synthesis_blocks": 2, "fine_synthesis_blocks": 1}
    grown = image_models.build("checkerboard", both)
    assert "start as the identity" in train.init_from(grown, "checkerboard", image_models.load_checkpoint(coarse))
    start = tmp_path / "start.pt"
    image_models.save_checkpoint(start, "checkerboard", both, grown, meta={})
    a, b = ImageCoder(str(coarse)), ImageCoder(str(start))
    assert b.model.config["fine_synthesis_blocks"] == 1 and a.model.fingerprint != b.model.fingerprint
    assert_same_bytes_and_pixels(a, b)

    # the fine block sees the synthesis at 1/4 of the image's side (a 1/16 latent upsampled twice), N channels
    seen = []
    grown.g_s.fine[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        grown.g_s.fine[0].conv2.weight.normal_(0, 0.05)
        out = grown.g_s(torch.randn(1, 24, 4, 5))
    assert seen == [(1, 16, 16, 20)] and out.shape == (1, 3, 64, 80)
    with torch.no_grad():  # and, once it has learned, changes the pixels
        y = torch.randn(1, 24, 4, 5)
        assert not torch.allclose(grown.g_s(y), image_models.load_checkpoint(coarse).net.g_s(y))

    # a run trains them and its point records them
    common = ["--arch", "checkerboard", "--N", "16", "--M", "24", "--quant", "mixed", "--means", "hyper"]
    run = tmp_path / "f"
    train.train(_args(run, photos, *common, "--init", str(coarse), "--synthesis-blocks", "2",
                      "--fine-synthesis-blocks", "1", "--steps", "3"))
    st = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    assert sum(k.startswith("g_s.fine.") for k in st["model"]) == 4 and st["model"]["g_s.fine.0.conv2.weight"].any()
    out_pt = tmp_path / "f.pt"
    train.export(run, str(out_pt), argparse.Namespace(command_line="test"))
    p = image_models.load_checkpoint(out_pt)
    assert p.config["fine_synthesis_blocks"] == 1 and len(p.net.g_s.fine) == 1 and len(p.net.g_s.blocks) == 2
    assert_roundtrip(ImageCoder(str(out_pt)), "checkerboard")

    # blocks never cross scales: coarse blocks do not seed a run with fine ones only, nor the reverse
    with pytest.raises(SystemExit, match="at the same scale"):
        train.train(_args(tmp_path / "x1", photos, *common, "--init", str(coarse), "--fine-synthesis-blocks", "2",
                          "--steps", "1"))
    with pytest.raises(SystemExit, match="at the same scale"):
        train.train(_args(tmp_path / "x2", photos, *common, "--init", str(out_pt), "--synthesis-blocks", "3",
                          "--steps", "1"))
