"""Coding pools from configuration: sizes, GPU shares, the CLI options that
set them, and the device each coding actor picks."""

from __future__ import annotations

import pytest


def test_size_pools_fit_pool_sizes_given_by_hand():
    """More actors than CPUs or GPUs (--caption-pool/--image-pool) must still
    all be placed: Ray would otherwise leave one pending and the job would wait forever."""
    from semarc.cluster.ray_cluster import size_pools

    d = size_pools(4, 0)  # the defaults fit as they are: whole CPUs
    assert [(p.size, p.num_cpus) for p in d.values()] == [(2, 1), (2, 1)]
    for cpus, gpus, cap, img in [(2, 0, 2, 1), (2, 0, 3, 3), (1, 0, 1, 1), (2, 1, 2, 2), (8, 2, 4, 4), (16, 1, 1, 1)]:
        s = size_pools(cpus, gpus, caption_pool=cap, image_pool=img)
        assert (s["caption"].size, s["image"].size) == (cap, img)
        assert sum(p.size * p.num_cpus for p in s.values()) <= cpus + 1e-9
        assert sum(p.size * p.num_gpus for p in s.values()) <= gpus + 1e-9
        assert all(p.num_cpus > 0 for p in s.values())
    assert size_pools(2, 0, caption_pool=2, image_pool=1)["caption"].num_cpus == 0.6666


def test_size_pools_gpu_shares_per_coding_actor():
    from semarc.cluster.ray_cluster import size_pools

    d = size_pools(8, 2)  # default: one GPU per coding actor on a two-GPU cluster
    assert (d["caption"].num_gpus, d["image"].num_gpus) == (1.0, 1.0)
    s = size_pools(8, 2, caption_gpus=0, image_gpus=0.25, image_pool=4)
    assert s["caption"].num_gpus == 0 and s["image"].num_gpus == 0.25 and s["image"].size == 4
    s = size_pools(8, 1, caption_gpus=1, image_gpus=1, image_pool=2)  # 3 GPUs asked of 1: scaled to fit
    assert sum(p.size * p.num_gpus for p in s.values()) <= 1 + 1e-9
    assert s["caption"].num_gpus == s["image"].num_gpus > 0
    s = size_pools(8, 2, captioner=True, caption_gpus=0, image_gpus=0)  # the captioner keeps the GPUs
    assert s["caption"].num_gpus == s["image"].num_gpus == 0 and s["captioner"].num_gpus == 1.0
    assert size_pools(4, 0, caption_gpus=1)["caption"].num_gpus == 0  # no GPU in the cluster
    with pytest.raises(ValueError, match=">= 0"):
        size_pools(4, 1, image_gpus=-1)


@pytest.mark.parametrize("cmd", ["encode", "decode"])
def test_cli_pool_options_reach_the_job(cmd):
    from semarc.cli import build_parser, decode_options, encode_options

    args = build_parser().parse_args([cmd, "SRC", "DST", "--caption-pool", "3", "--image-pool", "2",
                                      "--caption-gpus", "0", "--image-gpus", "0.5", "--caption-batch", "16",
                                      "--image-batch", "2"])
    opts = (encode_options if cmd == "encode" else decode_options)(args)
    assert (opts.caption_pool, opts.image_pool, opts.caption_gpus, opts.image_gpus,
            opts.caption_batch, opts.image_batch) == (3, 2, 0.0, 0.5, 16, 2)
    plain = (encode_options if cmd == "encode" else decode_options)(build_parser().parse_args([cmd, "S", "D"]))
    assert (plain.caption_pool, plain.image_pool, plain.caption_gpus, plain.image_gpus) == (None,) * 4


def test_coding_actors_run_where_ray_put_them():
    from semarc.workers.device import pick_device

    assert pick_device("auto", gpu_ids=[], cuda=True) == "cpu"       # no GPU share: CPU
    assert pick_device("auto", gpu_ids=[0], cuda=True) == "cuda"     # a GPU share: that GPU
    assert pick_device("auto", gpu_ids=[0], cuda=False) == "cpu"     # a share but no CUDA torch: CPU
    assert pick_device("cpu", gpu_ids=[0], cuda=True) == "cpu"       # asked for explicitly
    assert pick_device("auto") == "cpu"                              # outside Ray, as in this test process


def test_workers_load_on_the_device_picked(tmp_path):
    """The actors' classes, called directly (no Ray): on this CPU machine
    ``auto`` gives the CPU, and an explicit device reaches the coders."""
    from semarc.workers.image_worker import ImageWorker

    from semarc.codec import names
    from semarc.workers.caption_worker import CaptionWorker

    assert ImageWorker("semarc-f1").coder.device == "cpu"
    assert ImageWorker("semarc-f1", device="cpu").coder.device == "cpu"
    cw = CaptionWorker(names.DEFAULT_MODEL, "portable")
    assert str(cw.coder.lm.device) == "cpu"
    sections = [c["section"] for c in cw.encode(["a cat"])]
    assert cw.decode(sections, {"caption": cw.describe()}) == [{"caption": "a cat"}]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_actor_bitstreams_decode_on_a_cpu_actor(tmp_path):
    """An image-coding actor given a GPU share codes on it; its sections
    decode on a CPU actor (the codecs decode exactly across devices)."""
    import numpy as np
    from PIL import Image

    from semarc.codec import record
    from semarc.workers.image_worker import ImageWorker

    rng = np.random.default_rng(0)
    p = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(p)
    gpu = ImageWorker("semarc-h05s", device="cuda")
    assert str(gpu.coder.device).startswith("cuda")
    sec = gpu.encode([str(p)])[0]["section"]
    cpu = ImageWorker("semarc-h05s", device="cpu")
    prof = record.profile_table({"fingerprint": "-", "kind": "caption"}, cpu.describe())
    out = cpu.decode_arrays([sec], prof)[0]
    assert not isinstance(out, dict) and out.shape == (96, 128, 3)
