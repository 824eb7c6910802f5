"""What the encode and decode jobs share: where they run, how their coding
pools are sized (``cluster.ray_cluster.size_pools``), storage and progress."""

from __future__ import annotations

from dataclasses import dataclass, field


CODING_POOL_FIELDS = ("caption_batch", "image_batch", "caption_pool", "image_pool", "caption_gpus", "image_gpus")


@dataclass
class JobOptions:
    address: str | None = None         # join this Ray cluster; default: start a local one
    num_cpus: int | None = None        # CPUs of that local cluster (default: all)
    caption_batch: int = 64
    image_batch: int = 4
    caption_pool: int | None = None    # actors per coding pool (default: by cluster size)
    image_pool: int | None = None
    caption_gpus: float | None = None  # GPUs per coding actor (default: an even share of what is left)
    image_gpus: float | None = None
    threads_per_actor: int = 1
    storage_options: dict = field(default_factory=dict)
    progress: bool = True

    def coding_pools(self) -> dict:
        """``size_pools`` keyword arguments for the caption- and image-coding pools."""
        return {k: getattr(self, k) for k in CODING_POOL_FIELDS}
