import csv
import subprocess
import sys

import pytest
import torch

from semarc.codec import record
from semarc.codec import caption as cap
from semarc.codec.caption import CaptionError, quantized_freqs

EDGE = ["", " ", "A dog.", "emoji 🐶🎉 and ünïcödé, 中文, العربية, हिन्दी",
        "control\x00\x01\x7f chars\ttab\r\nnewline", "the end token <|im_end|> and <|im_start|> in text",
        "  leading and trailing spaces  ", "a" * 300, "\u200b\ufeff zero-width"]


def test_edge_texts_roundtrip_exactly(caption_coder):
    coded = caption_coder.encode_batch(EDGE)
    back = caption_coder.decode_batch([c.payload for c in coded])
    assert back == EDGE
    assert all(c.mode == "lm" for c in coded), [(c.mode, c.reason) for c in coded]


def test_unencodable_text_uses_flagged_fallback(caption_coder):
    lone_surrogate = "bad \ud800 surrogate"
    (c,) = caption_coder.encode_batch([lone_surrogate])
    assert c.mode == "fallback" and c.reason
    assert caption_coder.decode_batch([c.payload]) == [lone_surrogate]


def test_too_long_text_uses_fallback(caption_coder):
    long = "word " * 1500
    (c,) = caption_coder.encode_batch([long])
    assert c.mode == "fallback" and "tokens" in c.reason
    assert caption_coder.decode_batch([c.payload]) == [long]


def test_kodak_captions_near_model_code_length(caption_coder, shared):
    caps = [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv"))][:6]
    coded = caption_coder.encode_batch(caps)
    assert caption_coder.decode_batch([c.payload for c in coded]) == caps
    ideal = 0.0
    for ids, lg in zip([caption_coder.lm.tokenize(c) for c in caps],
                       caption_coder.lm.score(caption_coder.prefix, [caption_coder.lm.tokenize(c) for c in caps])):
        lp = torch.log_softmax(lg, -1)
        ideal += -sum(lp[t, s].item() for t, s in enumerate(ids + [caption_coder.lm.eos_id])) / 8 / 0.6931471805599453
    got = sum(len(c.payload) for c in coded)  # whole sections: mode, code, end and check
    raw = sum(len(c.encode()) for c in caps)
    assert got <= ideal + len(caps) * 1.0, (got, ideal)
    assert got >= ideal, "a lossless code cannot beat the model's ideal code length"

    assert got < raw / 6


def test_bytes_identical_across_batch_sizes(caption_coder, shared):
    import json

    coco = json.loads((shared / "coco_captions_val2017.json").read_text())["annotations"]
    caps = [a["caption"] for a in coco[:9]] + [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv"))][:1] + EDGE[:4]
    old = caption_coder.batch_size
    try:
        outs = []
        for bs in (1, 7, 64):
            caption_coder.batch_size = bs
            outs.append([c.payload for c in caption_coder.encode_batch(caps)])
    finally:
        caption_coder.batch_size = old
    assert outs[0] == outs[1] == outs[2]


def test_bytes_identical_across_thread_counts(caption_coder, tmp_path):
    """Encode in fresh processes with 1 and 2 torch threads; the bytes must match."""
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1]));"
        "from semarc.codec.caption import CaptionCoder;"
        "c = CaptionCoder(batch_size=4);"
        "caps = ['A red car parked by a tree.', 'Two people walk along a beach at sunset.', 'x'];"
        "sys.stdout.write(b''.join(e.payload.hex().encode() + b'|' for e in c.encode_batch(caps)).decode())"
    )
    outs = [subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True, timeout=600)
            for n in (1, 2)]
    assert outs[0].returncode == 0, outs[0].stderr[-2000:]
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.count("|") == 3


def test_corrupt_and_truncated_streams_are_errors(caption_coder):
    text = "A small boat floats on a calm lake under a grey sky."
    (c,) = caption_coder.encode_batch([text])
    p = c.payload
    variants = [p[:-1], p[: len(p) // 2], p + b"\x00", p + b"\x00\x01", b""]
    variants += [bytes([b ^ (1 << bit)]).join([p[:i], p[i + 1:]]) for i, b in enumerate(p) for bit in range(8)]
    got = caption_coder.decode_batch(variants, errors="return")
    undetected = [v for v, g in zip(variants, got) if not isinstance(g, CaptionError)]
    # every single-bit flip, truncation and extension is caught (decode, end or check bits)
    assert undetected == [], [(v.hex(), caption_coder.decode_batch([v], errors="return")) for v in undetected]
    with pytest.raises(CaptionError, match="caption 0"):
        caption_coder.decode_batch([p[:-1]])


def test_one_corrupt_item_does_not_spoil_its_batch(caption_coder):
    texts = ["A cat sleeps on a sofa.", "Three boats in a harbour.", "A red kite in a blue sky."]
    coded = caption_coder.encode_batch(texts)
    items = [c.payload for c in coded]
    items[1] = items[1][:-1]
    got = caption_coder.decode_batch(items, errors="return")
    assert got[0] == texts[0] and got[2] == texts[2] and isinstance(got[1], CaptionError)


def test_quantized_freqs_are_exact_integers_and_robust_to_noise():
    torch.manual_seed(0)
    lg = torch.randn(4, 5000, dtype=torch.float64) * 5
    for grid in (0, 1):
        f = quantized_freqs(lg, grid)
        assert f.dtype == torch.int64 and (f >= 1).all() and (f.sum(-1) < 2 ** 56).all()
        noisy = lg + torch.randn_like(lg) * 1e-13
        assert torch.equal(quantized_freqs(noisy, grid), f)
    (wa, na), (wb, nb) = cap.both_grids(lg)
    assert torch.equal(1 + wa, quantized_freqs(lg, 0)) and torch.equal(1 + wb, quantized_freqs(lg, 1))


def test_guard_band_flags_logits_on_a_grid_boundary():
    lg = torch.zeros(3, 10, dtype=torch.float64)
    lg[:, 1] = -3.0 / 64                 # x = 3: a boundary of grid B only
    lg[1, 2] = -(3.5 + 2 ** -40) / 64    # x just above 3.5: a boundary of grid A
    lg[2, 1] = -(7 + 1e-12) / 64         # x just above 7: grid B
    (_, near_a), (_, near_b) = cap.both_grids(lg)
    assert near_a.tolist() == [False, True, False]
    assert near_b.tolist() == [True, True, True]
    far = torch.zeros(1, 10, dtype=torch.float64)
    far[0, 1] = -3.25 / 64
    (_, fa), (_, fb) = cap.both_grids(far)
    assert not fa.any() and not fb.any()


def test_guard_picks_grid_b_then_fallback(caption_coder, monkeypatch):
    """Captions whose logits sit on grid A's boundaries are coded on grid B (8
    bits of mode); on both grids' boundaries, by the fallback; all decode."""
    texts = ["A dog runs on the beach.", "Two cups of coffee on a table."]
    base = caption_coder.encode_batch(texts)
    assert [c.grid for c in base] == [0, 0]
    real = cap.both_grids

    def unsafe(which):
        def both(lg):
            (wa, na), (wb, nb) = real(lg)
            return (wa, na | ("a" in which)), (wb, nb | ("b" in which))
        return both

    monkeypatch.setattr(cap, "both_grids", unsafe("a"))
    on_b = caption_coder.encode_batch(texts)
    assert [(c.mode, c.grid) for c in on_b] == [("lm", 1), ("lm", 1)]
    assert all(len(b.payload) >= len(a.payload) for a, b in zip(base, on_b))
    monkeypatch.setattr(cap, "both_grids", unsafe("ab"))
    fb = caption_coder.encode_batch(texts)
    assert all(c.mode == "fallback" and "grid" in c.reason for c in fb)
    monkeypatch.undo()
    assert caption_coder.decode_batch([c.payload for c in on_b + fb]) == texts + texts


def test_full_verification_decodes_again(caption_coder):
    texts = ["A bus on a wet street at night.", "", "a" * 50]
    a = caption_coder.encode_batch(texts, verify="full")
    b = caption_coder.encode_batch(texts, verify="stream")
    assert [c.payload for c in a] == [c.payload for c in b] and all(c.mode == "lm" for c in a)


def test_profile_fingerprint_mismatch_is_refused(caption_coder):
    desc = caption_coder.describe()
    table = record.profile_table(desc, {"fingerprint": "x"})
    record.check_profile(table, "caption", desc)
    other = dict(desc, fingerprint="0" * 64, model="some-other-model")
    with pytest.raises(record.FormatError, match="fingerprint"):
        record.check_profile(table, "caption", other)


SMOLLM2_WEIGHTS_SHA256 = "eba337aebd7d10e571a0b7732b7a5d8004187ea3e204e03c15d9b7c034de2bd3"


def test_gguf_cache_gives_the_same_model(tmp_path, monkeypatch):
    from semarc.codec.lm import TransformersLM

    monkeypatch.setenv("SEMARC_CACHE", str(tmp_path))
    cold = TransformersLM(dtype=torch.float32)
    assert list(tmp_path.glob("lm/*/COMPLETE"))
    warm = TransformersLM(dtype=torch.float32)
    assert cold.fingerprint_fields() == warm.fingerprint_fields()
    # float64 (the weights hash runs in a thread beside the conversion): the same weights hash, the one
    # every archive written so far names (bench/results/coco_prefill)
    warm64 = TransformersLM(dtype=torch.float64)
    assert {**warm64.fingerprint_fields(), "precision": "float32", "float64_clean": False} == cold.fingerprint_fields()
    assert cold.fingerprint_fields()["weights_sha256"] == SMOLLM2_WEIGHTS_SHA256
    ids = cold.tokenize("a cached model")
    assert torch.equal(cold.score(cold.encode_prefix("x"), [ids])[0], warm.score(warm.encode_prefix("x"), [ids])[0])


def test_any_local_causal_lm_by_path(tiny_llama, caption_coder):
    """The loading path for user models: a tiny random Llama saved locally,
    with SmolLM2's tokenizer; captions round-trip and the fingerprint differs."""
    from semarc.codec.caption import CaptionCoder

    coder = CaptionCoder(model=tiny_llama, batch_size=4)
    caps = ["a tiny model codes this too", "", "ünïcödé 🐶"]
    coded = coder.encode_batch(caps)
    assert coder.decode_batch([c.payload for c in coded]) == caps
    assert all(c.mode == "lm" for c in coded)
    assert coder.describe()["fingerprint"] != caption_coder.describe()["fingerprint"]


def test_fast_grids_equal_their_definition():
    """``both_grids`` and ``grid_weights`` (fewer passes) give exactly what the
    plain definition gives, boundary flags included, on logits crafted to sit
    within 1e-14 nat of grid boundaries, with ties at the maximum and -inf."""
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(200, 3000, dtype=torch.float64, generator=g) * 8
    top = lg.max(-1).values
    for r in range(0, 200, 3):
        lg[r, 10] = top[r] - 3.5 / 64 + 1e-14 * (r % 3 - 1)   # grid A boundary
        lg[r, 11] = top[r] - 7 / 64 + 1e-14 * (r % 3 - 1)     # grid B boundary
    lg[7, 12] = top[7]                                         # a tie at the maximum
    lg[8, 13] = top[8] - 1e-15                                 # a near-tie: x < 1, not a boundary that counts
    lg[9, 14] = -float("inf")
    fast, ref = cap.both_grids(lg), cap.both_grids_reference(lg)
    for k in range(2):
        assert torch.equal(fast[k][0], ref[k][0]) and torch.equal(fast[k][1], ref[k][1])
        x, fl, f = cap._grid_x(lg)
        assert torch.equal(cap.grid_weights(lg, k), cap.EXP_TABLE[cap._grid_k(fl, f, k)])
    assert 0 < int(ref[0][1].sum()) < 200 and not bool(ref[1][1][7]) and not bool(ref[1][1][8])


def test_encoding_by_prefill_gives_the_steps_bytes(caption_coder, shared):
    """The encoder's prefill pass and the decoder's KV-cache steps agree far
    inside the guard band: the same bytes either way, and they decode."""
    import json

    assert caption_coder.encode_path == "prefill" and caption_coder.prefill_noise < 1e-12
    coco = json.loads((shared / "coco_captions_val2017.json").read_text())["annotations"]
    caps = ([a["caption"] for a in coco[100:115]]
            + [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv"))][:3] + EDGE[:4])
    steps = cap.CaptionCoder(lm=caption_coder.lm, batch_size=8, encode_path="steps")
    a = caption_coder.encode_batch(caps)
    b = steps.encode_batch(caps)
    assert [c.payload for c in a] == [c.payload for c in b]
    assert caption_coder.decode_batch([c.payload for c in a]) == caps


@pytest.mark.parametrize("verdict", ["passes", "fails"])
def test_first_batch_beside_the_load_time_comparison(caption_coder, shared, monkeypatch, verdict):
    """The prefill-vs-steps comparison runs in a thread while the first batch
    is encoded by prefill. Its verdict decides what is returned: the prefill
    bytes if it passes; if it fails, the batch is encoded again by steps and
    the coder stays on steps (the bytes are the same either way for this
    model, so the test also counts the passes through each path)."""
    import json
    import threading

    coco = json.loads((shared / "coco_captions_val2017.json").read_text())["annotations"]
    caps = [a["caption"] for a in coco[200:212]]
    ref = cap.CaptionCoder(lm=caption_coder.lm, batch_size=8, encode_path="steps").encode_batch(caps)
    sync = cap.CaptionCoder(lm=caption_coder.lm, batch_size=8, encode_path="prefill")  # compared in __init__
    assert sync._noise.done()
    release = threading.Event()
    real = cap.CaptionCoder._step_noise

    def held(self, *args):  # the comparison ends only after the first batch's prefill
        release.wait(60)
        return real(self, *args) if verdict == "passes" else None

    calls = {"hidden": 0, "step": 0}
    armed = threading.Event()  # after the load: the first batch's calls in this thread
    lm = caption_coder.lm
    for name in calls:
        def counted(*a, _f=getattr(lm, name), _n=name, **k):
            if armed.is_set() and threading.current_thread() is threading.main_thread():
                calls[_n] += 1
                if _n == "hidden":
                    release.set()
            return _f(*a, **k)
        monkeypatch.setattr(lm, name, counted)
    monkeypatch.setattr(cap.CaptionCoder, "_step_noise", held)
    coder = cap.CaptionCoder(lm=lm, batch_size=8)
    assert coder._noise is not None and not coder._noise.done()
    armed.set()
    got = coder.encode_batch(caps)
    assert [c.payload for c in got] == [c.payload for c in ref]
    assert calls["hidden"] >= 1  # encoded by prefill before the verdict
    if verdict == "passes":
        assert coder.encode_path == "prefill" and calls["step"] == 0
        assert coder.prefill_noise == sync.prefill_noise  # the same figure from the thread as in __init__
    else:
        assert coder.encode_path == "steps" and coder.prefill_noise is None and calls["step"] > 0


def test_prefill_groups_bound_padding_and_attention(caption_coder):
    widths = [20] * 300 + [900, 1000, 1028]
    groups = caption_coder._prefill_groups(widths)
    assert [i for g in groups for i in g] == list(range(len(widths)))
    for g in groups:
        w = max(widths[i] for i in g)
        assert len(g) == 1 or (len(g) * w <= caption_coder.PREFILL_TOKENS
                               and len(g) * w * w <= caption_coder.PREFILL_ATTENTION)
