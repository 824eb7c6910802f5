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
def caption_coder():
    import torch

    torch.set_num_threads(1)
    from semarc.codec.caption import CaptionCoder

    return CaptionCoder(batch_size=8)


@pytest.fixture(scope="session")
def image_coder():
    from semarc.codec.image import ImageCoder

    return ImageCoder()


def run_cli(*args, timeout=900, env=None):
    e = dict(os.environ)
    e.setdefault("RAY_AUTH_MODE", "disabled")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "semarc.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


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
