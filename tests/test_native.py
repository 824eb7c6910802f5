"""The compiled decoder kernels (codec/native.py) and the written-out Llama
steps (codec/lm_steps.py): the same numbers as their torch definitions, and
captions that decode exactly whichever implementation wrote or reads them."""

import os
import subprocess
import sys

import pytest
import torch

from semarc.codec import caption as cap
from semarc.codec import native

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"no compiled kernel on this machine: {native.why_not()}")


@needs_native
def test_product_is_float64_accurate_and_batch_invariant():
    """Each output is one FMA chain in index order: the same bits for any
    number of columns (padding included) and thread count, and within float64
    rounding of torch's float64 product."""
    g = torch.Generator().manual_seed(0)
    for n, k in [(1100, 576), (37, 13), (8, 1536)]:
        w = torch.randn(n, k, generator=g)
        x = torch.randn(k, 40, dtype=torch.float64, generator=g)
        full = native.matmul(w, x)
        ref = w.double() @ x
        assert float((full - ref).abs().max()) <= 1e-13 * float(ref.abs().max()) * k ** 0.5
        for m in (1, 3, 8, 17, 24):
            assert torch.equal(native.matmul(w, x[:, :m]), full[:, :m])
        assert torch.equal(native.matmul(w, x[:, 5:29]), full[:, 5:29])  # a strided view in
    threads = torch.get_num_threads()
    try:
        w, x = torch.randn(4096, 64, generator=g), torch.randn(64, 9, dtype=torch.float64, generator=g)
        torch.set_num_threads(2)  # rows split across threads
        two = native.matmul(w, x)
        torch.set_num_threads(1)
        assert torch.equal(two, native.matmul(w, x))
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError):
        native.matmul(w.double(), x)


@needs_native
def test_cum_tables_equal_the_definition():
    """The decoder's tables from the kernel are identical to
    ``pad(cumsum(1 + grid_weights))``, for logits on and within 1e-14 nat of
    both grids' boundaries, beyond ``K_MAX``, and for strided rows."""
    g = torch.Generator().manual_seed(1)
    lg = torch.randn(30, 3000, dtype=torch.float64, generator=g) * 12
    top = lg.max(-1).values
    for r in range(30):
        lg[r, 10] = top[r] - 3.5 / 64 + 1e-14 * (r % 3 - 1)
        lg[r, 11] = top[r] - 7 / 64 + 1e-14 * (r % 3 - 1)
        lg[r, 12:40] = top[r] - torch.arange(28, dtype=torch.float64) / 128  # exact half units
    lg[3, 50] = top[3] - 45.0  # beyond K_MAX: weight 0
    strided = lg.T.contiguous().T
    for grid in (0, 1):
        ref = torch.nn.functional.pad(torch.cumsum(1 + cap.grid_weights(lg, grid), -1), (1, 0))
        assert torch.equal(native.cum_tables(lg, grid, cap.STEP_DENOM, cap.EXP_TABLE, cap.K_MAX), ref)
        assert torch.equal(native.cum_tables(strided[4:9], grid, cap.STEP_DENOM, cap.EXP_TABLE, cap.K_MAX), ref[4:9])
        assert torch.equal(cap.cum_tables(lg, grid), ref)


@needs_native
def test_step_functions_match_their_torch_formulas():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(96, 16, dtype=torch.float64, generator=g)
    w = torch.rand(96, dtype=torch.float64, generator=g)
    ref = w[:, None] * (h * torch.rsqrt(h.pow(2).mean(0, keepdim=True) + 1e-5))
    assert float((native.rms_norm(h, w, 1e-5) - ref).abs().max()) < 1e-14
    gu = torch.randn(64, 16, dtype=torch.float64, generator=g)
    ref = torch.nn.functional.silu(gu[:32]) * gu[32:]
    assert float((native.silu_mul(gu) - ref).abs().max()) < 1e-14
    # attention: 4 query heads over 2 kv heads of 16, 5 positions cached, the 6th written now
    nh, nkv, hd, cols, t = 4, 2, 16, 8, 5
    qkv = torch.randn((nh + 2 * nkv) * hd, cols, dtype=torch.float64, generator=g)
    kc = torch.randn(cols, nkv, 8, hd, dtype=torch.float64, generator=g)
    vc = torch.randn_like(kc)
    ang = torch.rand(hd, dtype=torch.float64, generator=g)
    cos, sin = ang.cos(), ang.sin()
    k_ref, v_ref = kc.clone(), vc.clone()
    out = native.attention(qkv, cos, sin, kc, vc, t, nh, hd ** -0.5)

    def rot(x):  # [heads, hd, cols]
        return x * cos.view(1, hd, 1) + torch.cat([-x[:, hd // 2:], x[:, :hd // 2]], 1) * sin.view(1, hd, 1)

    q = rot(qkv[:nh * hd].view(nh, hd, cols))
    k_ref[:, :, t] = rot(qkv[nh * hd:(nh + nkv) * hd].view(nkv, hd, cols)).permute(2, 0, 1)
    v_ref[:, :, t] = qkv[(nh + nkv) * hd:].view(nkv, hd, cols).permute(2, 0, 1)
    assert float((kc - k_ref).abs().max()) < 1e-14 and torch.equal(vc, v_ref)
    qr = q.permute(2, 0, 1).reshape(cols, nkv, nh // nkv, hd)
    att = torch.softmax((qr @ k_ref[:, :, :t + 1].transpose(-1, -2)) * hd ** -0.5, -1) @ v_ref[:, :, :t + 1]
    assert float((out - att.reshape(cols, nh * hd).T).abs().max()) < 1e-14


def _run_steps(lm, prefix, seqs):
    """Step ``seqs`` on the decoder's schedule (rows leave after their last
    token); the logits per (sequence, position)."""
    st = cap._Stepper(lm, prefix, len(seqs))
    got = {(i, 0): st.logits[r] for r, i in enumerate(st.rows)}
    t = 0
    while st.rows:
        st.advance({i: seqs[i][t] for i in st.rows if t < len(seqs[i])})
        t += 1
        for r, i in enumerate(st.rows):
            got[(i, t)] = st.logits[r]
    return got


@pytest.mark.parametrize("impl", ["native", "torch"])
def test_llama_steps_match_transformers_steps(tiny_llama, impl):
    """``LlamaSteps`` (compiled kernels or its torch form) gives transformers'
    step logits within 1e-12 nat, as rows leave the batch one by one (the
    cache compacts lazily)."""
    from semarc.codec import lm_steps
    from semarc.codec.lm import TransformersLM

    if impl == "native" and not native.available():
        pytest.skip(f"no compiled kernel: {native.why_not()}")
    ref_lm = TransformersLM(tiny_llama, fast_steps=False)
    lm = TransformersLM(tiny_llama, fast_steps=False)
    lm._steps, lm.steps_impl = lm_steps.LlamaSteps(lm.model, use_native=impl == "native"), "llama-steps"
    assert lm._steps.impl == impl
    prefix = lm.encode_prefix("<|im_start|>assistant\n")
    seqs = [lm.tokenize(s) for s in ["a red bus", "two dogs play on green grass near a lake at dawn", "",
                                     "ünïcödé 🐶 text", "a", "the same words again and again and again"]]
    want, got = _run_steps(ref_lm, prefix, seqs), _run_steps(lm, prefix, seqs)
    assert want.keys() == got.keys() and len(got) == sum(len(s) + 1 for s in seqs)
    assert max(float((got[k] - want[k]).abs().max()) for k in got) < 1e-12


@pytest.mark.slow
@needs_native
def test_captions_decode_across_step_implementations(tiny_llama, caption_coder, shared):
    """Bytes written with the compiled steps decode exactly with transformers'
    steps and the other way round, and both encoders write the same bytes:
    for the tiny model and for SmolLM2 on Kodak captions."""
    import csv

    from semarc.codec.lm import TransformersLM
    from semarc.codec.names import DEFAULT_MODEL

    kodak = [r["caption"] for r in csv.DictReader(open(shared / "kodak_captions.csv"))]
    for model, caps in [(tiny_llama, ["a tiny model codes this too", "", "ünïcödé 🐶", "x " * 40]),
                        (None, kodak[:2] + ["", "one more caption"])]:
        fast = TransformersLM(model) if model else caption_coder.lm
        slow = TransformersLM(model or DEFAULT_MODEL, fast_steps=False)
        assert fast.steps_impl == "llama-steps" and fast._steps.impl == "native" and slow.steps_impl == "transformers"
        a = cap.CaptionCoder(lm=fast, batch_size=3, encode_path="steps").encode_batch(caps)
        b = cap.CaptionCoder(lm=slow, batch_size=5, encode_path="steps").encode_batch(caps)
        assert [c.payload for c in a] == [c.payload for c in b] and all(c.mode == "lm" for c in a)
        assert cap.CaptionCoder(lm=slow, batch_size=4).decode_batch([c.payload for c in a]) == caps
        assert cap.CaptionCoder(lm=fast, batch_size=2).decode_batch([c.payload for c in b]) == caps


def test_semarc_native_0_turns_the_kernels_off():
    code = ("from semarc.codec import native; import sys; "
            "sys.exit(0 if not native.available() and 'SEMARC_NATIVE=0' in native.why_not() else 1)")
    env = {**os.environ, "SEMARC_NATIVE": "0"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@needs_native
def test_avx2_and_avx512_builds_give_the_same_bits(tmp_path):
    """The product is one FMA chain per output in both vector widths: an AVX2
    build of the same source gives bit-identical outputs (a machine without
    AVX-512 decodes with the same numbers)."""
    import ctypes
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    (tmp_path / "k.c").write_text(native.source())
    r = subprocess.run([cc, "-O3", "-march=haswell", "-fPIC", "-shared", "-ffp-contract=off", "-o",
                        str(tmp_path / "k.so"), str(tmp_path / "k.c"), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    assert lib.semarc_lanes() == 4
    lib.semarc_mm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t] * 4 + [ctypes.c_void_p]
    g = torch.Generator().manual_seed(3)
    w = torch.randn(203, 576, generator=g)
    x = torch.randn(576, 24, dtype=torch.float64, generator=g)
    out = torch.empty(203, 24, dtype=torch.float64)
    wb = torch.empty(8 * 576, dtype=torch.float64)
    lib.semarc_mm(w.data_ptr(), x.data_ptr(), out.data_ptr(), 0, 203, 576, 24, wb.data_ptr())
    assert torch.equal(out, native.matmul(w, x))
