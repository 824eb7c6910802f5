"""Start or join a Ray cluster, and size actor pools to it.

``ray_session(address=None)``: with no address a local Ray cluster is
started for the job and stopped afterwards (the embedded default); with an
address (``ray://host:10001``, ``host:6379`` or ``auto``) the job joins that
cluster and leaves it running.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class PoolSpec:
    name: str
    size: int
    num_cpus: float
    num_gpus: float = 0.0
    batch_size: int = 8


def size_pools(cpus: float, gpus: float, caption_batch: int = 64, image_batch: int = 4,
               caption_pool: int | None = None, image_pool: int | None = None) -> dict[str, PoolSpec]:
    """Split the cluster's CPUs (and GPUs) between the caption-coding and the
    image-coding pools. Without GPUs each actor takes one CPU (its torch uses
    that many threads); the two pools share the CPUs about evenly, at least one
    actor each."""
    cpus = max(1, int(cpus))
    if gpus >= 1:
        cap = caption_pool or max(1, int(gpus) // 2)
        img = image_pool or max(1, int(gpus) - cap)
        return {"caption": PoolSpec("caption", cap, 1, 1.0 if gpus >= 2 else 0.5, caption_batch),
                "image": PoolSpec("image", img, 1, 1.0 if gpus >= 2 else 0.5, image_batch)}
    cap = caption_pool or max(1, cpus // 2)
    img = image_pool or max(1, cpus - cap)
    return {"caption": PoolSpec("caption", cap, 1, 0, caption_batch),
            "image": PoolSpec("image", img, 1, 0, image_batch)}
