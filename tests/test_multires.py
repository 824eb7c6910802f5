"""Adaptive resolution (codec/multires.py): a mode set codes each image in the
mode of lowest loss, decodes every mode to the source size, records its modes
with checkpoint ids, refuses what its encoder never writes, and runs in the
encode and decode jobs."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data

from semarc.codec import multires, record, zoo
from semarc.codec.image import ImageCoder, ImageCodecError, open_coder
from semarc.codec.search_loss import SearchLoss
from semarc.codec.varint import write_varint

FAST2 = "semarc-fast+semarc-fast@1/2"


@pytest.fixture(scope="module")
def images():
    smooth = np.zeros((96, 128, 3), np.uint8)  # a gradient: what a lower resolution codes almost for free
    smooth[...] = np.linspace(40, 220, 128, dtype=np.float64).astype(np.uint8)[None, :, None]
    smooth[..., 2] = np.linspace(200, 60, 96).astype(np.uint8)[:, None]
    a = skimage.data.astronaut()
    return [smooth, a[100:196, 150:278].copy(), a[300:377, 40:141].copy()]  # the last one odd-sized


@pytest.fixture(scope="module")
def coder():
    return open_coder(FAST2)


def _loss(ref, img, nbytes, loss: SearchLoss):
    from semarc import metrics

    mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
    return loss.lmbda * mse + loss.lpips_weight * metrics.lpips(ref, img) + 8 * nbytes / (ref.shape[0] * ref.shape[1])


def test_parse_and_checkpoint_ids():
    modes = multires.parse("semarc-q1+semarc-q2@3/4+semarc-q2@2/4")
    assert [(m.point, m.scale.numerator, m.scale.denominator) for m in modes] == [
        ("semarc-q1", 1, 1), ("semarc-q2", 3, 4), ("semarc-q2", 1, 2)]
    assert modes[2].coded_size(101, 77) == (51, 39) and modes[1].coded_size(1, 1) == (1, 1)
    assert zoo.checkpoint_id("semarc-q1+semarc-q2@1/2") == "semarc-h05s+semarc-h10s@1/2"
    assert zoo.checkpoint_id("semarc-q1-adaptive") == "semarc-h05s+semarc-h10s@3/4+semarc-h10s@1/2"
    assert multires.is_mode_set("semarc-q1-adaptive") and not multires.is_mode_set("semarc-q1")
    for bad, why in (("semarc-q1", "2 to"), ("a+b@3/2", "NUM <= DEN"), ("a+b@0/2", "NUM <= DEN"),
                     ("a+a", "repeats"), ("a+b@x", "POINT@NUM/DEN"), ("a+" * 16 + "b", "2 to")):
        with pytest.raises(ValueError, match=why):
            multires.parse(bad)
    with pytest.raises(zoo.RetiredCodecError):
        zoo.checkpoint_id("semarc-q1+semarc-h10c@1/2")


def test_each_image_takes_the_mode_of_lowest_loss_and_decodes_to_its_size(coder, images):
    assert coder.spec == "semarc-f1+semarc-f1@1/2" and coder.decision_loss == SearchLoss(0.001, 0.0)
    single = ImageCoder("semarc-f1")
    coded = coder.encode_batch(images)
    back = coder.decode_batch([(c.payload, c.check) for c in coded])
    chosen = []
    for a, c, b in zip(images, coded, back):
        assert b.shape == a.shape and (c.width, c.height) == (a.shape[1], a.shape[0])
        mode, w, h, _ = coder.mode_of(c.payload)
        chosen.append(mode)
        losses, decs = [], []  # each mode alone, coded and decoded as a single point would
        for m in coder.modes:
            small = multires._resize(a, *m.coded_size(w, h))
            x = single.encode_batch([small])[0]
            decs.append(multires._resize(single.decode_batch([(x.payload, x.check)])[0], w, h))
            n = len(record.pack_image(multires.MultiResCoder._frame(0, w, h, x.payload), x.check))
            losses.append(_loss(a, decs[-1], n, coder.decision_loss))
        assert mode == int(np.argmin(losses)), losses
        assert np.array_equal(b, decs[mode])
    assert chosen[0] == 1 and chosen[1] == 0, chosen  # the gradient at half size, the photo at full
    # one image at a time or in a batch: the same bytes
    assert [c.payload for c in coded] == [coder.encode_batch([a])[0].payload for a in images]


def test_an_lpips_term_in_the_decision_loss_is_scored_as_the_metric(images):
    loss = SearchLoss(0.0005, 0.5)
    c = open_coder(FAST2, decision_loss=loss)
    single = ImageCoder("semarc-f1")
    for a in images:
        w, h = a.shape[1], a.shape[0]
        want = []
        for m in c.modes:
            x = single.encode_batch([multires._resize(a, *m.coded_size(w, h))])[0]
            dec = multires._resize(single.decode_batch([(x.payload, x.check)])[0], w, h)
            want.append(_loss(a, dec, len(record.pack_image(multires.MultiResCoder._frame(0, w, h, x.payload),
                                                             x.check)), loss))
        assert c.mode_of(c.encode_batch([a])[0].payload)[0] == int(np.argmin(want)), want


def test_the_decision_loss_steers_the_choice(images):
    rate_only = open_coder(FAST2, decision_loss="1e-9")  # bytes alone: the smallest mode
    fidelity = open_coder(FAST2, decision_loss="1000")   # distortion alone: full resolution
    for a in images:
        assert rate_only.mode_of(rate_only.encode_batch([a])[0].payload)[0] == 1
        assert fidelity.mode_of(fidelity.encode_batch([a])[0].payload)[0] == 0


def test_with_a_latent_search_the_plain_choice_is_searched_in_its_mode_alone(images):
    plain, searched = open_coder(FAST2), open_coder(FAST2, latent_steps=4)
    assert searched.latent_loss == searched.decision_loss == SearchLoss(0.001, 0.0)
    single = ImageCoder("semarc-f1", latent_steps=4)
    for a in images:
        mode = plain.mode_of(plain.encode_batch([a])[0].payload)[0]
        c = searched.encode_batch([a])[0]
        assert searched.mode_of(c.payload)[0] == mode  # the plain encodes chose it
        m = searched.modes[mode]
        x = single.encode_batch([multires._resize(a, *m.coded_size(a.shape[1], a.shape[0]))])[0]
        assert c.payload == multires.MultiResCoder._frame(mode, a.shape[1], a.shape[0], x.payload)
        assert c.payload != plain.encode_batch([a])[0].payload
        assert searched.decode_batch([(c.payload, c.check)])[0].shape == a.shape


def test_the_profile_names_the_modes_and_its_fingerprint_covers_them(coder):
    d = coder.describe()
    assert d["codec"] == "semarc-f1+semarc-f1@1/2" and d["arch"] == "multires"
    assert [m["scale"] for m in d["modes"]] == ["1/1", "1/2"]
    assert all(m["fingerprint"] == zoo.entry("semarc-f1").fingerprint for m in d["modes"])
    other = open_coder("semarc-fast+semarc-fast@3/4").describe()
    assert other["fingerprint"] != d["fingerprint"]
    with pytest.raises(record.FormatError, match="fingerprint"):
        record.check_profile({"image": other}, "image", d)


def test_hostile_payloads_are_errors_never_crashes(coder, images):
    c = coder.encode_batch(images[:1])[0]
    mode, w, h, inner = coder.mode_of(c.payload)
    head = write_varint(mode) + write_varint(w) + write_varint(h)
    assert c.payload.startswith(head)
    body = c.payload[len(head):]
    bad = {
        "mode out of range": write_varint(2) + head[1:] + body,
        "truncated header": head[:2],
        "size too large": write_varint(mode) + write_varint(1 << 21) + write_varint(h) + body,
        "too many pixels": write_varint(mode) + write_varint(1 << 20) + write_varint(1 << 20) + body,
        "zero width": write_varint(mode) + write_varint(0) + write_varint(h) + body,
        "other mode": write_varint(1 - mode) + head[1:] + body,
        "cut body": c.payload[: len(c.payload) // 2],
    }
    out = coder.decode_batch([(p, c.check) for p in bad.values()] + [(c.payload, c.check)])
    for (why, _), r in zip(bad.items(), out):
        assert isinstance(r, ImageCodecError), (why, r)
    assert "mode 2" in str(out[0]) and isinstance(out[-1], np.ndarray)
    rng = np.random.default_rng(0)
    for _ in range(200):  # random corruptions: an array or an ImageCodecError, nothing else
        p = bytearray(c.payload)
        for _ in range(int(rng.integers(1, 4))):
            p[int(rng.integers(len(p)))] = int(rng.integers(256))
        r = coder.decode_batch([(bytes(p), c.check)])[0]
        assert isinstance(r, (np.ndarray, ImageCodecError)), r


def test_an_encode_and_a_decode_job_run_a_mode_set(tmp_path, images):
    import semarc
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(src / f"im{i}.png")
    arch, dec = tmp_path / "arch", tmp_path / "dec"
    rep = semarc.encode(str(src), str(arch), codec=FAST2, progress=False, num_cpus=1, caption_pool=1, image_pool=1)
    assert rep.ok == 3 and not rep.errors, rep
    assert json.loads((arch / "_job.json").read_text())["config"]["codec"] == "semarc-f1+semarc-f1@1/2"
    table = pa.concat_tables([pq.read_table(p) for p in sorted(arch.glob("part-*.parquet"))]).to_pylist()
    profiles = json.loads(pq.read_metadata(sorted(arch.glob("part-*.parquet"))[0]).metadata[b"semarc.profiles"])
    assert profiles["image"]["codec"] == "semarc-f1+semarc-f1@1/2"
    d = semarc.decode(str(arch), str(dec), progress=False, num_cpus=1)
    assert d.decoded == 3 and not d.errors, d
    coder = open_coder(FAST2)
    for r in table:
        want = coder.decode_batch([record.unpack_image(r["image"])])[0]
        got = np.asarray(Image.open(dec / "images" / f"{r['key']}.png").convert("RGB"))
        assert np.array_equal(got, want)
