import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMARC_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared/data is not here ({SHARED}); it holds the Kodak and COCO test data")
    return SHARED / "data"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, caption_coder) -> str:
    """A tiny random Llama (2 layers, GQA 4/2) with SmolLM2's tokenizer, saved
    in a local folder (the loading path for users' own models)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    tok = caption_coder.lm.tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def caption_coder():
    import torch

    torch.set_num_threads(1)
    from semarc.codec.caption import CaptionCoder

    return CaptionCoder(batch_size=8)


@pytest.fixture(scope="session")
def image_coder():
    """The small factorized point (fast); the default point's architecture has
    its own tests (test_image_ckbd.py)."""
    from semarc.codec.image import ImageCoder

    return ImageCoder("semarc-f1")


def run_cli(*args, timeout=900, env=None):
    e = dict(os.environ)
    e.setdefault("RAY_AUTH_MODE", "disabled")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "semarc.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


def code_with_threads(codec: str | None, threads: int, out) -> tuple[str, str]:
    """Encode and decode the astronaut photo in a fresh process with this many
    torch threads. Returns (payload sha256, check); the decoded pixels go to
    ``out`` (.npy)."""
    script = ("import sys, torch, hashlib, numpy; torch.set_num_threads(int(sys.argv[1]));"
              "from semarc.codec.image import ImageCoder; from semarc.codec.imageio import read_image;"
              "from semarc.jobs.sample import skimage_data_dir;"
              "a = read_image((skimage_data_dir() / 'astronaut.png').read_bytes());"
              f"c = ImageCoder({codec!r}) if {codec!r} else ImageCoder();"
              "p = c.encode_batch([a])[0]; x = c.decode_batch([(p.payload, p.check)])[0];"
              "numpy.save(sys.argv[2], x); print(hashlib.sha256(p.payload).hexdigest(), p.check)")
    r = subprocess.run([sys.executable, "-c", script, str(threads), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return tuple(r.stdout.split()[-2:])


def assert_same_across_threads(codec: str | None, tmp_path) -> None:
    """Same bytes and symbols with 1 and 2 threads; the float synthesis may put
    a rare pixel one level apart (measured: ~1e-5 of values), never more."""
    import numpy as np

    assert code_with_threads(codec, 1, tmp_path / "t1.npy") == code_with_threads(codec, 2, tmp_path / "t2.npy")
    a, b = (np.load(tmp_path / f"t{n}.npy").astype(int) for n in (1, 2))
    d = np.abs(a - b)
    assert d.max() <= 1 and (d > 0).mean() < 1e-3


# With torch and pyarrow both loaded, pyarrow's thread pool sometimes aborts the
# interpreter's teardown ("terminate called without an active exception", exit
# 134) after every test has passed. End the test process the way `semarc` does
# (semarc/cli.py main): flush, then os._exit with pytest's own exit status.
_EXIT = {"status": 0}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT["status"])
