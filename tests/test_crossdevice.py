"""bench/crossdevice.py: bitstreams made on one side decode on the other.

On this CPU both sides are the CPU (the full check, a GPU encoding and this
CPU decoding, is in bench/results/crossdevice.md); with CUDA present the GPU
test encodes on the GPU."""

from __future__ import annotations

import json

import pytest
import torch

from semarc.bench import crossdevice

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared):
    return crossdevice.prepare(str(tmp_path_factory.mktemp("xin")), shared=str(shared), n_coco=5, n_images=1)


def _check(rep: dict, same_device: bool) -> None:
    cap = rep["captions"]
    for key, v in cap.items():
        if isinstance(v, dict):
            assert v["bytes_identical_to_here"] == cap["n"], key
            assert v["decoded_here_exactly"] == cap["n"], key
    assert cap["lm_captions"] >= cap["n"] - 2  # the edge cases that must fall back are few
    for point, v in rep["images"].items():
        assert v["decoded_here_symbol_check_ok"] == v["n"] == v["decoded_there_ok"], point
        assert v["payloads_identical_batch1_vs_4_there"] == v["n"], point
        if same_device:
            assert v["payloads_identical_to_here"] == v["n"] and v["pixels_identical_here_vs_there"] == v["n"]
            assert v["max_abs_pixel_diff"] == 0


def test_cpu_to_cpu(inputs, tmp_path):
    side = crossdevice.encode_side(str(inputs), "cpu", str(tmp_path / "side"), points=["semarc-f1"])
    assert "cpu/batch1" in side["captions"]["runs"] and "cpu/batch7" in side["captions"]["runs"]
    # a second, images-only side (rate points trained after the first side ran) merges into one report
    side2 = crossdevice.encode_side(str(inputs), "cpu", str(tmp_path / "side2"), points=["semarc-h05s"],
                                    captions=False)
    assert side2["captions"]["runs"] == {} and side["captions"]["encode_path"]["cpu"] in ("prefill", "steps")
    rep = crossdevice.compare(str(inputs), f"{tmp_path / 'side'},{tmp_path / 'side2'}", str(tmp_path / "cmp"))
    _check(rep, same_device=True)
    assert set(rep["images"]) == {"semarc-f1", "semarc-h05s"} and rep["captions"]["n"] >= 5
    assert json.loads((tmp_path / "cmp" / "crossdevice.json").read_text()) == rep
    assert "| semarc-f1 |" in (tmp_path / "cmp" / "crossdevice.md").read_text()
    # a side made with other weights is reported, not decoded with the wrong model
    data = json.loads((tmp_path / "side" / "side.json").read_text())
    data["images"]["semarc-f1"]["fingerprint"] = "0" * 64
    (tmp_path / "side" / "side.json").write_text(json.dumps(data))
    rep = crossdevice.compare(str(inputs), str(tmp_path / "side"), str(tmp_path / "cmp2"))
    assert rep["images"]["semarc-f1"] == {"error": "different weights on the two sides"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_to_cpu(inputs, tmp_path):
    crossdevice.encode_side(str(inputs), "cuda", str(tmp_path / "side"),
                            points=["semarc-f1", "semarc-h05s", "semarc-h10s"])
    _check(crossdevice.compare(str(inputs), str(tmp_path / "side"), str(tmp_path / "cmp")), same_device=False)
