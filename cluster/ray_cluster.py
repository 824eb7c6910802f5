"""Start or join a Ray cluster, and size actor pools to it.

``ray_session(address=None)``: with no address a local Ray cluster is
started for the job and stopped afterwards (the embedded default); with an
address (``ray://host:10001``, ``host:6379`` or ``auto``) the job joins that
cluster and leaves it running.

While the job runs, a watchdog checks that the cluster's head (its GCS) still
answers. A head that has not answered for ``SEMARC_CLUSTER_LOST_S`` seconds
(15) fails the job with a ``JobError`` saying so (what was published is kept;
a rerun resumes), before Ray's own driver gives up on the head and ends the
process with its own message (after 60 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("semarc.cluster")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    import ray

    if ray.is_initialized():  # a caller (a notebook, a test) already holds a session: use it
        yield ray
        return
    kw = dict(log_to_driver=True, logging_level=logging.WARNING)
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **kw)
    else:
        # "local": a new cluster of this job's own, even where another one runs on the machine
        # (ray.init() would join that one, with its resources and its failures)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 **kw)
    dog = _Watchdog.start(ray)
    try:
        yield ray
    except KeyboardInterrupt:
        if dog is not None and dog.lost:
            from ..workers.errors import JobError

            raise JobError(dog.lost) from None
        raise
    finally:
        try:
            ray.shutdown()
        finally:
            if dog is not None:
                dog.stop()


class _Watchdog:
    """Watches the head of the cluster a job runs on (a TCP connection to its
    GCS port every 2 s). When the head has not answered for
    ``SEMARC_CLUSTER_LOST_S`` seconds, it interrupts the job's main thread
    (which ``ray_session`` turns into a ``JobError``); if the job has not
    let go of Ray within 30 s (stuck in a call into Ray that waits for
    the head), it says why and ends the process with exit status 1. Only for
    a job run in the main thread."""

    def __init__(self, host: str, port: int, after_s: float) -> None:
        self.host, self.port, self.after_s = host, port, after_s
        self.lost: str | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="semarc-cluster-watchdog", daemon=True)

    @classmethod
    def start(cls, ray) -> "_Watchdog | None":
        if threading.current_thread() is not threading.main_thread():
            return None  # a job run from another thread of an application: its main thread is not the job's
        try:
            from ray.util.client import ray as client

            if client.is_connected():  # a Ray client (ray://): its connection fails by itself
                return None
            host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
            after = float(os.environ.get("SEMARC_CLUSTER_LOST_S", 15))
        except Exception:  # noqa: BLE001 - no GCS address to watch: no watchdog
            return None
        dog = cls(host, int(port), after)
        dog._thread.start()
        return dog

    def stop(self) -> None:
        self._stopped.set()

    def _answers(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=3).close()
            return True
        except OSError:
            return False

    def _run(self) -> None:
        import _thread

        down_since = None
        while not self._stopped.wait(2.0):
            if self._answers():
                down_since = None
                continue
            down_since = down_since or time.time()
            if time.time() - down_since < self.after_s:
                continue
            self.lost = (f"the Ray cluster is gone: its head ({self.host}:{self.port}) has not answered for "
                         f"{time.time() - down_since:.0f} s; what the job published is kept: rerun the same "
                         f"command on a running cluster to resume")
            _thread.interrupt_main()
            if not self._stopped.wait(30):
                print(f"semarc: job failed: {self.lost}", file=sys.stderr, flush=True)
                os._exit(1)
            return


@dataclass
class PoolSpec:
    name: str
    size: int
    num_cpus: float
    num_gpus: float = 0.0
    batch_size: int = 8


def size_pools(cpus: float, gpus: float, caption_batch: int = 64, image_batch: int = 4,
               caption_pool: int | None = None, image_pool: int | None = None, captioner: bool = False,
               captioner_batch: int = 8, captioner_pool: int | None = None,
               captioner_gpus: float | None = None, generator: str = "captioner",
               caption_gpus: float | None = None, image_gpus: float | None = None) -> dict[str, PoolSpec]:
    """Split the cluster's CPUs (and GPUs) between the caption-coding and the
    image-coding pools. Without GPUs each actor takes one CPU (its torch uses
    that many threads); the two pools share the CPUs about evenly, at least one
    actor each.

    With ``captioner``, a third pool runs a generative model: captioning at
    encode, or, named ``generator="refiner"``, diffusion refinement at decode
    (the spec is under that name; ``captioner_*`` size it). With GPUs it takes
    about half of them (``captioner_gpus`` per actor: default a whole GPU, half
    of one on a one-GPU machine) and the coding pools share the rest; without
    GPUs it takes a third of the CPUs. Where the pools would ask for more CPUs
    or GPUs than the cluster has (at least one actor each, or pool sizes given
    by hand), every actor's share is scaled down so that all of them can be
    placed: e.g. ``caption_pool=2, image_pool=1`` on 2 CPUs gives each actor
    0.6666 CPU, for work where caption coding costs far more than image coding.

    ``caption_gpus`` / ``image_gpus``: GPUs per caption-coding / image-coding
    actor instead of the default share (0 keeps that pool on CPUs). An actor
    with a GPU share codes on that GPU (``workers.device``)."""
    cpus_i = max(1, int(cpus))
    if not captioner:
        specs = _coding_pools(cpus, gpus, caption_batch, image_batch, caption_pool, image_pool)
        _gpu_shares(specs, caption_gpus, image_gpus)
        _fit(specs, "num_cpus", float(cpus_i))  # pool sizes given by hand may ask for more than there is
        _fit(specs, "num_gpus", float(gpus))
        return specs
    if gpus >= 1:
        frac = float(captioner_gpus) if captioner_gpus else (1.0 if gpus >= 2 else 0.5)
        n = captioner_pool or max(1, int(gpus / 2 / frac + 1e-9))
        cpt = PoolSpec(generator, n, 1, frac, captioner_batch)
        specs = _coding_pools(max(1, cpus_i - n), max(0.0, gpus - n * frac), caption_batch, image_batch,
                              caption_pool, image_pool, gpu_share=True)
    else:
        n = captioner_pool or max(1, cpus_i // 3)
        cpt = PoolSpec(generator, n, 1, 0, captioner_batch)
        specs = _coding_pools(max(1, cpus_i - n), 0, caption_batch, image_batch, caption_pool, image_pool)
    _gpu_shares(specs, caption_gpus, image_gpus)
    specs[generator] = cpt
    _fit(specs, "num_cpus", float(cpus_i))
    _fit(specs, "num_gpus", float(gpus))
    return specs


def _gpu_shares(specs: dict[str, PoolSpec], caption_gpus: float | None, image_gpus: float | None) -> None:
    for name, share in (("caption", caption_gpus), ("image", image_gpus)):
        if share is not None:
            if share < 0:
                raise ValueError(f"{name} GPUs per actor must be >= 0, not {share}")
            specs[name].num_gpus = float(share)


def _fit(specs: dict[str, PoolSpec], res: str, have: float) -> None:
    want = sum(s.size * getattr(s, res) for s in specs.values())
    if want > have + 1e-9:
        scale = have / want
        for s in specs.values():
            setattr(s, res, math.floor(getattr(s, res) * scale * 1e4) / 1e4)  # Ray: 4 decimals


def _coding_pools(cpus: float, gpus: float, caption_batch: int, image_batch: int, caption_pool: int | None,
                  image_pool: int | None, gpu_share: bool = False) -> dict[str, PoolSpec]:
    cpus = max(1, int(cpus))
    if gpus >= 1:
        cap = caption_pool or max(1, int(gpus) // 2)
        img = image_pool or max(1, int(gpus) - cap)
        return {"caption": PoolSpec("caption", cap, 1, 1.0 if gpus >= 2 else 0.5, caption_batch),
                "image": PoolSpec("image", img, 1, 1.0 if gpus >= 2 else 0.5, image_batch)}
    if gpu_share and gpus > 0:  # what the captioner left of the GPUs: shared by one actor of each
        cap, img = caption_pool or 1, image_pool or 1
        share = math.floor(gpus / (cap + img) * 1e4) / 1e4
        return {"caption": PoolSpec("caption", cap, 1, share, caption_batch),
                "image": PoolSpec("image", img, 1, share, image_batch)}
    cap = caption_pool or max(1, cpus // 2)
    img = image_pool or max(1, cpus - cap)
    return {"caption": PoolSpec("caption", cap, 1, 0, caption_batch),
            "image": PoolSpec("image", img, 1, 0, image_batch)}
