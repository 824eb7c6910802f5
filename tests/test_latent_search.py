"""Encoder-side latent search (codec/latent_search.py): the encoder searches
for latents with a lower training loss, the coder writes exactly those, the
decoder and the decoded exactness are unchanged, and an encode job records
and uses the option."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch

from semarc.codec import image_models, latent_search, record, zoo
from semarc.codec.image import ImageCoder, _pad, training_loss
from semarc.codec.search_loss import SearchLoss
from semarc.metrics import LPIPSAlex


@pytest.fixture(scope="module")
def crops():
    a = skimage.data.astronaut()
    return [a[100:180, 150:250].copy(), a[300:380, 40:140].copy()]  # 80x100: padded to 128x128


def test_search_lowers_the_points_loss_and_the_coder_writes_its_latents(crops):
    coder = ImageCoder("semarc-q1", latent_steps=8)
    net, a = coder.net, crops[0]
    loss = training_loss(coder.model)
    assert loss == SearchLoss(0.00015, 0.09)  # semarc-h05s's own
    lp = LPIPSAlex()
    with torch.no_grad():
        x = _pad(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, coder.stride)
        y = image_models.analysis(net, x)
        z = image_models.hyper_analysis(net, y)
    ys, zs = latent_search.search_latents(net, x, y, z, a.shape[:2], 8, loss, lp)
    target = x[..., :a.shape[0], :a.shape[1]]
    with torch.no_grad():
        plain = latent_search.objective(net, y, z, target, loss, lp).item()
        found = latent_search.objective(net, ys, zs, target, loss, lp).item()
    assert found < plain * 0.995, (found, plain)  # a real gain, not the encoder's own guess returned
    # the coder writes the searched latents: the same bytes as a coder handed them
    handed = ImageCoder("semarc-q1")
    handed.arch.search = lambda x_, y_, z_, size: (ys, zs)
    searched = coder.encode_batch([a])[0]
    assert searched.payload == handed.encode_batch([a])[0].payload
    assert searched.payload != ImageCoder("semarc-q1").encode_batch([a])[0].payload
    # which any decoder decodes exactly (the check covers the symbols)
    back = ImageCoder("semarc-q1").decode_batch([(searched.payload, searched.check)])[0]
    assert back.shape == a.shape and back.dtype == np.uint8


def test_the_search_step_falls_from_lr_along_a_half_cosine_and_never_reaches_zero():
    for steps in (1, 8, 100):
        sizes = [latent_search.step_size(t, steps) for t in range(steps)]
        assert sizes[0] == latent_search.LR
        assert all(a > b for a, b in zip(sizes, sizes[1:])) and sizes[-1] > 0
    assert latent_search.step_size(50, 100) == pytest.approx(latent_search.LR / 2)
    assert latent_search.step_size(90, 100) < 0.03 * latent_search.LR


def test_channels_last_search_minimises_the_same_loss_and_returns_contiguous_latents(crops, monkeypatch):
    """The CPU default runs the search on channels-last tensors: only float
    rounding differs from the contiguous search, so both reach the same loss
    (to float precision) from the same start; the latents handed to the
    entropy coder are contiguous either way."""
    coder = ImageCoder("semarc-q1")
    net, a = coder.net, crops[1]
    loss, lp = training_loss(coder.model), LPIPSAlex()
    with torch.no_grad():
        x = _pad(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, coder.stride)
        y = image_models.analysis(net, x)
        z = image_models.hyper_analysis(net, y)
    target = x[..., :a.shape[0], :a.shape[1]]
    found = {}
    for cl in (False, True):
        ys, zs = latent_search.search_latents(net, x, y, z, a.shape[:2], 6, loss, lp, channels_last=cl)
        assert ys.is_contiguous() and zs.is_contiguous()
        with torch.no_grad():
            found[cl] = latent_search.objective(net, ys, zs, target, loss, lp).item()
    with torch.no_grad():
        plain = latent_search.objective(net, y, z, target, loss, lp).item()
    assert found[True] < plain * 0.995 and found[False] < plain * 0.995, (found, plain)
    assert found[True] == pytest.approx(found[False], rel=2e-3), found
    # and a coder's search on a CPU takes the channels-last path
    seen = []
    real = latent_search._layout
    monkeypatch.setattr(latent_search, "_layout", lambda t, cl: seen.append(cl) or real(t, cl))
    ImageCoder("semarc-q1", latent_steps=1).encode_batch([a])
    assert seen and all(seen)


@pytest.mark.parametrize("codec", ["semarc-fast", "semarc-q1"])
def test_each_image_is_searched_alone_so_batches_do_not_change_bytes(codec, crops):
    coder = ImageCoder(codec, latent_steps=4)
    together = coder.encode_batch(crops)
    alone = [coder.encode_batch([a])[0] for a in crops]
    assert [c.payload for c in together] == [c.payload for c in alone]
    assert ImageCoder(codec, latent_steps=0).encode_batch(crops[:1])[0].payload == \
        ImageCoder(codec).encode_batch(crops[:1])[0].payload


def test_the_loss_searched_is_the_points_own_or_the_one_given(tmp_path):
    assert {e.checkpoint: e.loss for e in zoo.ZOO} == {
        "semarc-h05s": (0.00015, 0.09), "semarc-h10s": (0.0006, 0.3), "semarc-f1": (0.001, 0.0)}
    torch.manual_seed(0)
    net = image_models.build("factorized", {"N": 8, "M": 8})
    joint = tmp_path / "joint.pt"
    image_models.save_checkpoint(joint, "factorized", {"N": 8, "M": 8}, net,
                                 meta={"train_config": {"lmbda": 0.002, "lpips_weight": 0.5}})
    assert ImageCoder(str(joint), latent_steps=1).latent_loss == SearchLoss(0.002, 0.5)
    entropy = tmp_path / "entropy.pt"
    image_models.save_checkpoint(entropy, "factorized", {"N": 8, "M": 8}, net,
                                 meta={"train_config": {"lmbda": 0.002, "train_part": "entropy"}})
    with pytest.raises(ValueError, match="latent_loss"):
        ImageCoder(str(entropy), latent_steps=1)
    assert ImageCoder(str(entropy), latent_steps=1, latent_loss="0.001,0.2").latent_loss == SearchLoss(0.001, 0.2)
    # a shipped id whose weights are not the shipped ones does not borrow the zoo's loss
    assert training_loss(image_models.LoadedModel("semarc-h05s", "factorized", {}, net, "0" * 64,
                                                  meta={"train_config": {"lmbda": 0.003}})) == SearchLoss(0.003)


@pytest.mark.parametrize("text", ["", "a", "0", "-1,0", "0.001,-0.1", "1,2,3", "nan", "0.001,inf"])
def test_bad_search_losses_are_refused(text):
    with pytest.raises(ValueError):
        SearchLoss.parse(text)


def test_negative_steps_and_non_exact_architectures_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        ImageCoder("semarc-fast", latent_steps=-1)
    with pytest.raises(ValueError, match="semarc's own architectures"):
        ImageCoder("zoo:bmshj2018-factorized:1", zoo_pretrained=False, latent_steps=2)


def test_an_encode_job_searches_records_the_option_and_refuses_another(tmp_path, crops):
    import semarc
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i, a in enumerate(crops):
        Image.fromarray(a).save(src / f"crop{i}.png")
    dst = tmp_path / "dst"
    rep = semarc.encode(str(src), str(dst), codec="semarc-fast", latent_steps=6, progress=False, num_cpus=1,
                        caption_pool=1, image_pool=1)
    assert rep.ok == 2 and not rep.errors, rep
    assert json.loads((dst / "_job.json").read_text())["config"]["latent_steps"] == 6
    table = pa.concat_tables([pq.read_table(p) for p in sorted(dst.glob("part-*.parquet"))]).to_pylist()
    stored = {r["key"].rsplit(".", 1)[0]: r["image"] for r in table}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's actors ran (threads_per_actor 1): the search's floats depend on it
    try:
        coder = ImageCoder("semarc-fast", latent_steps=6)
        for i, a in enumerate(crops):
            c = coder.encode_batch([a])[0]
            assert stored[f"crop{i}"] == record.pack_image(c.payload, c.check)
            assert c.payload != ImageCoder("semarc-fast").encode_batch([a])[0].payload
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(Exception, match="configuration"):
        semarc.encode(str(src), str(dst), codec="semarc-fast", latent_steps=0, progress=False, num_cpus=1)


def test_an_encode_job_checks_its_search_options_before_any_work():
    from semarc.jobs.inputs import JobError
    from semarc.jobs.options import EncodeOptions

    assert "latent_steps" not in EncodeOptions().job_config()  # archives written before the option resume unchanged
    cfg = EncodeOptions(latent_steps=30, latent_loss="0.0002, 0.1").job_config()
    assert cfg["latent_steps"] == 30 and cfg["latent_loss"] == [0.0002, 0.1]
    for bad, why in (({"latent_steps": -1}, ">= 0"), ({"latent_loss": "0.001"}, "latent_steps N > 0"),
                     ({"latent_steps": 5, "latent_loss": "x"}, "latent_loss")):
        with pytest.raises(JobError, match=why):
            EncodeOptions(**bad).job_config()


def test_search_layout_bench_codes_each_image_with_both_layouts(crops, tmp_path):
    """`semarc bench search-layout`: every image coded by the whole encoder
    once per layout, the order alternating, and the report written."""
    from PIL import Image

    from semarc.bench import search_variants

    folder = tmp_path / "images"
    folder.mkdir()
    for i, a in enumerate(crops):
        Image.fromarray(a).save(folder / f"crop{i}.png")
    r = search_variants.run(str(tmp_path / "out"), "semarc-q1", 2, images_dir=str(folder), command="test")
    assert [(row["image"], row["variant"]) for row in r["rows"]] == [
        ("crop0", "contiguous"), ("crop0", "channels_last"), ("crop1", "channels_last"), ("crop1", "contiguous")]
    assert all(row["bytes"] > 0 and row["psnr"] > 15 and 0 < row["lpips"] < 1 and row["loss"] > 0 for row in r["rows"])
    assert r["means"]["contiguous"]["identical_codes"] == 2 and 0 <= r["means"]["channels_last"]["identical_codes"] <= 2
    assert r["means"]["contiguous"]["time_ratio"] == 1 and r["means"]["channels_last"]["time_ratio"] > 0
    saved = json.loads((tmp_path / "out" / "search_layout.json").read_text())
    assert saved["rows"] == r["rows"]
    assert "channels-last against contiguous" in (tmp_path / "out" / "search_layout.md").read_text()


def test_search_schedule_bench_runs_each_schedule_as_the_encoder_would(crops, tmp_path, monkeypatch):
    """`semarc bench search-schedule`: each schedule codes each image (the
    order rotating), the encoder's own schedule gives the encoder's bytes,
    and a bad schedule is refused before any work."""
    from PIL import Image

    from semarc.bench import search_variants

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(crops[0]).save(folder / "crop0.png")
    Image.fromarray(crops[1]).save(folder / "crop1.png")
    variants = search_variants.schedules(f"constant:0.003,cosine:{latent_search.LR},cosine:0.05")
    assert variants["constant:0.003"] == {"schedule": "constant", "peak": 0.003}
    seen = []
    real = latent_search.step_size
    monkeypatch.setattr(latent_search, "step_size", lambda *a: seen.append(a[2:]) or real(*a))
    r = search_variants.run(str(tmp_path / "out"), "semarc-q1", 3, variants, "search_schedule",
                            images_dir=str(folder), command="test")
    assert [row["variant"] for row in r["rows"]] == [
        "constant:0.003", f"cosine:{latent_search.LR}", "cosine:0.05",
        f"cosine:{latent_search.LR}", "cosine:0.05", "constant:0.003"]
    assert {(0.003, "constant"), (latent_search.LR, "cosine"), (0.05, "cosine")} <= set(seen)
    plain = ImageCoder("semarc-q1")  # the loss reported is the searched latents', at most the encoder's guess's
    with torch.no_grad():
        x = _pad(torch.from_numpy(crops[0]).permute(2, 0, 1)[None].float() / 255, plain.stride)
        y = image_models.analysis(plain.net, x)
        guess = latent_search.objective(plain.net, y, image_models.hyper_analysis(plain.net, y),
                                        x[..., :crops[0].shape[0], :crops[0].shape[1]], training_loss(plain.model),
                                        LPIPSAlex()).item()
    assert 0 < r["rows"][0]["loss"] <= guess * (1 + 1e-4)
    monkeypatch.setattr(latent_search, "step_size", real)
    own = {row["image"]: row["sha256"] for row in r["rows"] if row["variant"] == f"cosine:{latent_search.LR}"}
    coder = ImageCoder("semarc-q1", latent_steps=3)
    for i, a in enumerate(crops):
        c = coder.encode_batch([a])[0]
        assert hashlib.sha256(record.pack_image(c.payload, c.check)).hexdigest() == own[f"crop{i}"]
    assert (tmp_path / "out" / "search_schedule.json").exists()
    assert "step schedules" in (tmp_path / "out" / "search_schedule.md").read_text()
    for bad in ("cosine:0.007", "linear:0.01,cosine:0.007", "cosine:0,constant:0.003", "cosine:x,constant:1"):
        with pytest.raises(SystemExit):
            search_variants.schedules(bad)
    with pytest.raises(ValueError, match="schedule"):
        latent_search.search_latents(coder.net, None, None, None, (1, 1), 2, SearchLoss(0.001), schedule="linear")
