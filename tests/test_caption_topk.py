"""The top-k caption profile: coder logic with a real local provider
(transformers, each context alone), and the vLLM provider where vLLM and a GPU
exist."""

import pytest
import torch

from semarc.codec import record
from semarc.codec.caption import CaptionError
from semarc.codec.caption_topk import TopKCaptionCoder, TransformersTopK, topk_table


@pytest.fixture(scope="module")
def topk_coder(caption_coder):
    return TopKCaptionCoder(TransformersTopK(caption_coder.lm), profile="topk-local", k=8)


def test_topk_table_is_exact_integers_with_an_escape():
    ids, cum = topk_table([(5, -0.1), (9, -2.5), (1, -2.5)])
    assert ids == [5, 9, 1] and len(cum) == 5 and cum[0] == 0
    assert all(b > a for a, b in zip(cum, cum[1:]))
    assert topk_table([(5, -0.1 + 1e-17), (9, -2.5), (1, -2.5)]) == (ids, cum)


def test_roundtrip_including_tokens_outside_the_top_k(topk_coder, caption_coder):
    texts = ["A dog runs on the beach.", "zqxv wkpf 🐉 qqq", ""]
    coded = topk_coder.encode_batch(texts)
    assert all(c.mode == "lm" for c in coded)
    assert topk_coder.decode_batch([c.payload for c in coded]) == texts
    # the escape costs bits: rare tokens cost more here than in the portable profile
    portable = caption_coder.encode_batch(texts[1:2])[0]
    assert len(coded[1].payload) > len(portable.payload)


def test_corrupt_stream_is_an_error(topk_coder):
    (c,) = topk_coder.encode_batch(["Two boats in a harbour."])
    bad = [c.payload[:-1], c.payload + b"\x00"] + [bytes([c.payload[0] ^ (1 << b)]) + c.payload[1:] for b in range(8)]
    got = topk_coder.decode_batch(bad, errors="return")
    assert all(isinstance(g, CaptionError) for g in got), got


def test_decode_conditions_are_recorded_and_checked(topk_coder):
    desc = topk_coder.describe()
    assert desc["conditions"]["threads"] == torch.get_num_threads() and desc["k"] == 8
    other = dict(desc, conditions=dict(desc["conditions"], gpu="NVIDIA A100"), fingerprint="0" * 64)
    with pytest.raises(record.FormatError, match="conditions"):
        record.check_profile({"caption": other}, "caption", desc)


def test_vllm_profile_roundtrip():
    from semarc.codec.lm_vllm import available

    ok, why = available()
    if not ok:
        pytest.skip(why)
    from semarc.codec.caption_topk import load_coder

    coder = load_coder("smollm2-135m", "vllm")
    texts = ["A red bus on a city street.", "emoji 🐶 and ünïcödé", ""]
    coded = coder.encode_batch(texts)
    assert coder.decode_batch([c.payload for c in coded]) == texts
    assert coder.describe()["conditions"]["gpu"]
    # the same requests in other batches give the same bytes (batch-invariant kernels)
    coder.batch_size = 1
    assert [c.payload for c in coder.encode_batch(texts)] == [c.payload for c in coded]
