"""Captioning: a tiny randomly initialised image-text-to-text model (LLaVA: CLIP
vision tower + Llama text model, SmolLM2's tokenizer), saved to a temporary
folder and loaded back by local path through transformers' own loading path
(AutoProcessor + AutoModelForImageTextToText). Its captions are gibberish; the
plumbing is real: batching, prompts, limits, per-image errors, "one LMM"
caption coding, and the encode job -> shards -> decode round trip."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from semarc.bench.captioner import build_tiny_model
from semarc.generate.captioner import (PROMPTS, CaptionerConfig, CaptionerError, export_text_lm, make_captioner,
                                    text_lm, text_lm_dir, vllm_unavailable)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("vlm") / "tiny-llava", seed=0)


@pytest.fixture(scope="module")
def captioner(tiny_model):
    return make_captioner(CaptionerConfig(model=tiny_model, max_tokens=12))


@pytest.fixture(scope="module")
def images() -> list:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48 + 16 * i, 64 - 8 * i, 3), dtype=np.uint8) for i in range(3)]


def test_loads_by_local_path_through_transformers(tiny_model, captioner):
    assert (Path(tiny_model) / "processor_config.json").exists()
    assert type(captioner.model).__name__ == "LlavaForConditionalGeneration"
    assert type(captioner.processor).__name__ == "LlavaProcessor"
    assert captioner.identity() == {"model": tiny_model, "backend": "transformers", "prompt": "short",
                                    "prompt_text": PROMPTS["short"], "max_tokens": 12, "temperature": 0.0,
                                    "seed": None, "max_side": 1024}


def test_batch_of_three_gives_three_captions_same_as_one_by_one(captioner, images):
    batch = captioner.caption_batch(images)
    assert len(batch) == 3 and all(isinstance(c, str) for c in batch)
    alone = [captioner.caption_batch([im])[0] for im in images]
    assert batch == alone
    assert len(set(batch)) > 1  # different images, different (gibberish) captions
    # PIL images and image-file bytes are the same images
    pils = [Image.fromarray(a) for a in images]
    assert captioner.caption_batch(pils) == batch


def test_prompt_option_changes_the_prompt(tiny_model, captioner, images):
    misc = make_captioner(CaptionerConfig(model=tiny_model, prompt="misc", max_tokens=12))
    custom = make_captioner(CaptionerConfig(model=tiny_model, prompt="Name one colour.", max_tokens=12))
    assert PROMPTS["short"] in captioner.prompt() and PROMPTS["misc"] not in captioner.prompt()
    assert PROMPTS["misc"] in misc.prompt() and "<image>" in misc.prompt()
    assert "Name one colour." in custom.prompt()
    assert custom.identity()["prompt"] == "custom"
    assert "Overall:" in PROMPTS["misc"] and "item" in PROMPTS["misc"]
    ids = {json.dumps(c.identity(), sort_keys=True) for c in (captioner, misc, custom)}
    assert len(ids) == 3
    assert misc.caption_batch(images) != captioner.caption_batch(images)  # the model sees another prompt
    assert CaptionerConfig(model="m", prompt="misc").new_tokens > CaptionerConfig(model="m").new_tokens


def test_max_new_tokens_is_respected(tiny_model, images):
    short = make_captioner(CaptionerConfig(model=tiny_model, max_tokens=3))
    longer = make_captioner(CaptionerConfig(model=tiny_model, max_tokens=20))
    a, b = short.caption_batch(images), longer.caption_batch(images)
    assert all(0 < n <= 3 for n in short.last_generated_tokens)
    assert all(n <= 20 for n in longer.last_generated_tokens) and max(longer.last_generated_tokens) > 3
    for x, y in zip(a, b):  # greedy: the shorter caption is where the longer one started
        assert y.startswith(x) and len(y) > len(x)


def test_seeded_sampling_is_reproducible(tiny_model, images):
    cfg = CaptionerConfig(model=tiny_model, max_tokens=8, temperature=1.0, seed=3)
    a = make_captioner(cfg).caption_batch(images)
    assert make_captioner(cfg).caption_batch(images) == a
    assert cfg.identity()["seed"] == 3


def test_an_unreadable_image_is_a_per_image_error(captioner, images, tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(images[0]).save(png)
    batch = [images[0], b"not an image at all", np.zeros((0, 5, 3), np.uint8), png.read_bytes()[:40],
             images[1], "a string", np.zeros((4, 4, 3), np.float32)]
    out = captioner.caption_batch(batch)
    toks = captioner.last_generated_tokens
    assert len(out) == len(batch) == len(toks)
    assert [t is None for t in toks] == [False, True, True, True, False, True, True]
    assert out[0] == captioner.caption_batch([images[0]])[0]
    assert out[4] == captioner.caption_batch([images[1]])[0]
    for i in (1, 2, 3, 5, 6):
        assert isinstance(out[i], CaptionerError), (i, out[i])
    assert "cannot read image" in str(out[1]) and "empty" in str(out[2])
    assert "cannot read image" in str(out[3]) and "str" in str(out[5]) and "float32" in str(out[6])


def test_a_failure_inside_generation_stays_with_its_image(tiny_model, images, monkeypatch):
    cap = make_captioner(CaptionerConfig(model=tiny_model, max_tokens=6))
    good = cap.caption_batch(images)
    real = cap._generate

    def flaky(pils):  # the model fails on the second image (say, a shape it cannot take)
        if any(p.size == (images[1].shape[1], images[1].shape[0]) for p in pils):
            raise RuntimeError("boom")
        return real(pils)

    monkeypatch.setattr(cap, "_generate", flaky)
    out = cap.caption_batch(images)
    assert out[0] == good[0] and out[2] == good[2]
    assert isinstance(out[1], CaptionerError) and "boom" in str(out[1])


def test_unknown_backend_and_vllm_unavailable_reason():
    with pytest.raises(ValueError, match="backend"):
        CaptionerConfig(model="m", backend="onnx")
    why = vllm_unavailable()
    if why is not None:
        with pytest.raises(RuntimeError, match="unavailable"):
            make_captioner(CaptionerConfig(model="m", backend="vllm"))


def test_one_lmm_codes_captions_with_the_captioners_own_language_model(tiny_model, captioner, images, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from semarc.codec.caption import CaptionCoder

    out = export_text_lm(tiny_model, str(tmp_path / "text-lm"))
    assert export_text_lm(tiny_model, out) == out  # exported once, then reused
    # the exported causal LM is the captioner's language model: same text-only logits
    vlm = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 400, 5000, 77, 2]])
    with torch.inference_mode():
        assert torch.equal(vlm(input_ids=ids).logits, lm(input_ids=ids).logits)
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()

    coder = CaptionCoder(lm=text_lm(tiny_model, out), batch_size=4)
    desc = coder.describe()
    assert desc["model"] == out and desc["float64_clean"]
    texts = captioner.caption_batch(images) + ["A red bus on a wet street.", "", "caf\u00e9 <image> \U0001f409"]
    coded = coder.encode_batch(texts)
    assert coder.decode_batch([c.payload for c in coded]) == texts
    assert sum(c.mode == "lm" for c in coded) >= 4


def test_one_lmm_export_of_a_qwen2_5_vl_text_model(tmp_path):
    """Qwen2.5-VL's text model has no causal-LM class: it is exported as Qwen2
    (same weights; its multimodal RoPE is plain RoPE on text), logits checked."""
    from transformers import AutoModelForCausalLM, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from semarc.bench.captioner import smollm2_tokenizer

    tok = smollm2_tokenizer()
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0]))
    torch.manual_seed(0)
    vlm = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    vlm.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    out = export_text_lm(str(tmp_path / "qwen"), str(tmp_path / "qwen-lm"))
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([[1, 400, 5000, 77, 2, 9, 9, 31]])
    with torch.inference_mode():
        assert torch.allclose(vlm(input_ids=ids).logits, lm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_vllm_backend_captions_a_batch(tmp_path, images):
    why = vllm_unavailable()
    if why:
        pytest.skip(f"vLLM captioner backend not testable here: {why}")
    # vLLM's attention kernels want head sizes like 64: a wider tiny model
    model = build_tiny_model(tmp_path / "tiny-vllm", hidden=128, heads=2, kv_heads=1, intermediate=256,
                             vision_hidden=64, vision_heads=1, vision_intermediate=128)
    cap = make_captioner(CaptionerConfig(model=model, backend="vllm", max_tokens=8, gpu_memory_utilization=0.3,
                                         max_model_len=512))
    out = cap.caption_batch(images + [b"junk"])
    assert len(out) == 4 and all(isinstance(c, str) for c in out[:3]) and isinstance(out[3], CaptionerError)
    assert all(n <= 8 for n in cap.last_generated_tokens[:3])
    assert [cap.caption_batch([im])[0] for im in images] == out[:3]  # greedy: batch = one by one


def test_size_pools_fit_a_captioner_on_the_cluster():
    from semarc.cluster.ray_cluster import size_pools

    assert size_pools(2, 0) == size_pools(2, 0, captioner=False)
    for cpus, gpus in [(1, 0), (2, 0), (3, 0), (16, 0), (16, 1), (16, 2), (8, 8)]:
        s = size_pools(cpus, gpus, captioner=True, captioner_batch=5)
        assert set(s) == {"caption", "image", "captioner"} and s["captioner"].batch_size == 5
        assert sum(p.size * p.num_cpus for p in s.values()) <= max(1, cpus) + 1e-9
        assert sum(p.size * p.num_gpus for p in s.values()) <= gpus + 1e-9
        assert all(p.size >= 1 for p in s.values())
        if gpus:
            assert s["captioner"].num_gpus >= 0.5
    assert size_pools(16, 1, captioner=True, captioner_gpus=0.8)["captioner"].num_gpus == 0.8


def test_captioner_identity_is_part_of_the_job_config():
    from semarc.jobs.encode import EncodeOptions
    from semarc.jobs.inputs import JobError

    plain = EncodeOptions().job_config()
    assert "captioner" not in plain
    a = EncodeOptions(captioner="m").job_config()
    assert a["captioner"]["model"] == "m" and a["caption_model"] == plain["caption_model"]
    assert EncodeOptions(captioner="m", caption_prompt="misc").job_config() != a
    assert EncodeOptions(captioner="m", caption_max_tokens=7).job_config() != a
    assert EncodeOptions(captioner="m", captioner_backend="vllm").job_config() != a
    assert EncodeOptions(captioner="m", captioner_batch=3).job_config() == a  # throughput knobs are not identity
    assert EncodeOptions(captioner="m", one_lmm=True).job_config()["caption_model"] == "lm-of:m"
    with pytest.raises(JobError, match="captioner"):
        EncodeOptions(one_lmm=True).job_config()


# -- the encode job end to end -----------------------------------------------------

def _table(out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


@pytest.fixture(scope="module")
def caption_job(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("capjob")
    r = run_cli("sample", base / "sample")
    assert r.returncode == 0, r.stderr
    manifest = Path(r.stdout.strip())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows[:3]:
        del row["caption"]  # these get generated captions; the others keep their manifest captions
    (base / "sample" / "images" / "notes.png").write_text("not an image\n")
    rows.append({"uri": "images/notes.png", "key": "bad/notes"})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in rows))
    # what the captioner writes for the first three images, here, under greedy decoding
    cap = make_captioner(CaptionerConfig(model=tiny_model, max_tokens=10))
    want = cap.caption_batch([(manifest.parent / x["uri"]).read_bytes() for x in rows[:3]])
    assert all(isinstance(w, str) and w for w in want)
    return {"base": base, "manifest": manifest, "rows": rows, "want": want, "model": tiny_model}


def _encode(job, out, *extra):
    return run_cli("encode", job["manifest"], out, "--captioner", job["model"], "--caption-max-tokens", "10",
                   "--shard-size", "2", "--num-cpus", "2", "--no-progress", *extra)


@pytest.mark.slow
def test_generated_captions_flow_through_encode_and_decode_exactly(caption_job, tiny_model):
    job = caption_job
    out = job["base"] / "out"
    r = _encode(job, out)
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]  # the bad image is an error row; the job goes on
    t = _table(out).to_pylist()
    by_key = {x["key"]: x for x in t}
    assert [x["key"] for x in t] == [x["key"] for x in job["rows"]]
    gen_keys = [x["key"] for x in job["rows"][:3]]
    man_keys = [x["key"] for x in job["rows"][3:5]]
    assert all(by_key[k]["caption_source"] == "generated" and by_key[k]["caption"] for k in gen_keys)
    assert all(by_key[k]["caption_source"] == "manifest" for k in man_keys)
    bad = by_key["bad/notes"]
    assert bad["status"] == "error" and bad["error"].startswith("image:") and "caption:" in bad["error"]
    cfg = json.loads((out / "_job.json").read_text())["config"]
    assert cfg["captioner"]["model"] == tiny_model and cfg["captioner"]["max_tokens"] == 10

    dec = job["base"] / "dec"
    r = run_cli("decode", out, dec, "--num-cpus", "2", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    got = {x["key"]: x["caption"] for x in map(json.loads, (dec / "captions.jsonl").read_text().splitlines())}
    assert [got[k] for k in gen_keys] == job["want"]
    assert [got[k] for k in man_keys] == [x["caption"] for x in job["rows"][3:5]]

    # a rerun with the same options redoes nothing; other captioner settings are refused
    r = _encode(job, out)
    assert r.returncode == 3 and "3 already done" in r.stdout, r.stderr[-2000:]
    r = _encode(job, out, "--caption-prompt", "misc")
    assert r.returncode == 1 and "another configuration" in r.stderr
    r = run_cli("encode", job["manifest"], out, "--shard-size", "2", "--num-cpus", "2", "--no-progress")
    assert r.returncode == 1 and "another configuration" in r.stderr


@pytest.mark.slow
def test_one_lmm_job_codes_generated_captions_with_the_captioners_lm(caption_job, tiny_model):
    job = caption_job
    out = job["base"] / "out-one-lmm"
    try:
        r = _encode(job, out, "--one-lmm")
        assert r.returncode == 3, r.stdout + r.stderr[-3000:]
        prof = json.loads((out / "_job.json").read_text())["profiles"]["caption"]
        assert prof["model"] == text_lm_dir(tiny_model)
        assert json.loads((out / "_job.json").read_text())["config"]["caption_model"] == f"lm-of:{tiny_model}"
        t = _table(out).to_pylist()
        dec = job["base"] / "dec-one-lmm"
        r = run_cli("decode", out, dec, "--num-cpus", "2", "--no-progress")
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        got = {x["key"]: x["caption"] for x in map(json.loads, (dec / "captions.jsonl").read_text().splitlines())}
        assert len(got) == 5 and sum(x["caption_source"] == "generated" for x in t) == 3
        assert [got[x["key"]] for x in job["rows"][:3]] == job["want"]
        assert [got[x["key"]] for x in job["rows"][3:5]] == [x["caption"] for x in job["rows"][3:5]]
    finally:
        shutil.rmtree(text_lm_dir(tiny_model), ignore_errors=True)


@pytest.mark.slow
def test_a_captioner_that_cannot_load_fails_the_job(caption_job, tmp_path):
    r = run_cli("encode", caption_job["manifest"], tmp_path / "out", "--captioner", str(tmp_path / "no-such-model"),
                "--num-cpus", "2", "--no-progress")
    assert r.returncode == 1 and "cannot load" in r.stderr and "no-such-model" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "out").glob("part-*"))


def test_one_lmm_needs_a_captioner(tmp_path):
    r = run_cli("encode", tmp_path / "m.jsonl", tmp_path / "out", "--one-lmm")
    assert r.returncode == 2 and "--captioner" in r.stderr
