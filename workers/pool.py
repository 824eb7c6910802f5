"""A fixed-size pool of Ray actors with least-loaded dispatch.

Calls are queued on the actor that has the fewest in flight; the caller
bounds how much it submits (the job keeps a window of shards in flight), so
memory stays bounded and every actor stays busy.
"""

from __future__ import annotations

import itertools


class ActorPool:
    def __init__(self, cls, size: int, num_cpus: float = 1, num_gpus: float = 0, args: tuple = (),
                 kwargs: dict | None = None, name: str = "pool") -> None:
        import ray

        remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=2,
                                max_task_retries=2)(cls)
        self.name = name
        self.actors = [remote_cls.remote(*args, **(kwargs or {})) for _ in range(max(1, size))]
        self._inflight = {i: 0 for i in range(len(self.actors))}
        self._rr = itertools.count()

    def submit(self, method: str, *args):
        """Call ``method`` on the least-loaded actor; returns (ObjectRef, actor index)."""
        i = min(self._inflight, key=lambda k: (self._inflight[k], (next(self._rr) + k) % len(self.actors)))
        self._inflight[i] += 1
        return getattr(self.actors[i], method).remote(*args), i

    def done(self, i: int) -> None:
        self._inflight[i] -= 1

    def call_all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def meters(self) -> list[dict]:
        """Every live actor's ``Metered.meter()`` (an actor that cannot answer is left out)."""
        import ray

        refs = [a.meter.remote() for a in self.actors]
        out = []
        for r in refs:
            try:
                out.append(ray.get(r, timeout=30))
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue
        return out

    def first(self, method: str, *args):
        import ray

        return ray.get(getattr(self.actors[0], method).remote(*args))


def stage_report(pools: dict, wall_s: float) -> dict:
    """{stage name: ``workers.meter.stage_summary``} for the pools of a job
    (None entries skipped); ``wall_s``: how long the pools have been up."""
    from .meter import stage_summary

    return {name: stage_summary(p.meters(), wall_s) for name, p in pools.items() if p is not None}


def codec_pools(specs: dict, caption_model: str, caption_profile: str, codec: str, threads: int,
                storage_options: dict) -> tuple[ActorPool, ActorPool]:
    """The caption-coding and image-coding pools of a job, sized by ``specs``
    (``cluster.ray_cluster.size_pools``)."""
    from .caption_worker import CaptionWorker
    from .image_worker import ImageWorker

    cs, ims = specs["caption"], specs["image"]
    cap = ActorPool(CaptionWorker, cs.size, cs.num_cpus, cs.num_gpus,
                    args=(caption_model, caption_profile, threads, cs.batch_size), name="caption")
    img = ActorPool(ImageWorker, ims.size, ims.num_cpus, ims.num_gpus,
                    args=(codec, threads, storage_options), name="image")
    return cap, img


def captioner_pool(spec, config: dict, threads: int, storage_options: dict) -> ActorPool:
    """The captioning pool of a job (``spec``: ``size_pools(...)["captioner"]``)."""
    from .captioner_worker import CaptionerWorker

    return ActorPool(CaptionerWorker, spec.size, spec.num_cpus, spec.num_gpus,
                     args=(config, threads, storage_options), name="captioner")


def refiner_pool(spec, config: dict, threads: int, storage_options: dict) -> ActorPool:
    """The refinement pool of a decode job (``spec``: ``size_pools(..., generator="refiner")["refiner"]``)."""
    from .refiner_worker import RefinerWorker

    return ActorPool(RefinerWorker, spec.size, spec.num_cpus, spec.num_gpus,
                     args=(config, threads, storage_options), name="refiner")


def submit_batches(pool: ActorPool, method: str, items: list, batch: int, *extra) -> list:
    """Submit ``items`` in batches; returns [(offset, (ref, actor index))]."""
    return [(b, pool.submit(method, items[b:b + batch], *extra)) for b in range(0, len(items), batch)]


def submit_sparse(pool: ActorPool, method: str, items: list, batch: int, *extra) -> tuple[list[int], list]:
    """``submit_batches`` for items where None means "nothing to do" (a record
    without a caption): only the others are sent, so every call carries a full
    batch of real work. Returns (their positions, the calls) for ``gather_sparse``."""
    idx = [j for j, x in enumerate(items) if x is not None]
    return idx, submit_batches(pool, method, [items[j] for j in idx], batch, *extra)


def gather_sparse(pool: ActorPool, sparse_calls: tuple[list[int], list], n: int, fill=None, **kw) -> list:
    """The results of ``submit_sparse`` in input order (length ``n``); ``fill``
    stands for each item that was not sent."""
    idx, calls = sparse_calls
    out: list = [fill] * n
    for j, got in zip(idx, gather(pool, calls, len(idx), **kw)):
        out[j] = got
    return out


def gather(pool: ActorPool, calls: list, n: int, on_batch=None, on_error=None) -> list:
    """The results of ``submit_batches`` calls, in input order (length ``n``).
    With ``on_error``, a call that failed (its actor died past its retries)
    yields ``on_error(exception)`` for each of its items instead of raising."""
    import ray

    out: list = [None] * n
    for k, (b, (ref, a)) in enumerate(calls):
        try:
            got = ray.get(ref)
        except ray.exceptions.RayError as e:
            if on_error is None:
                raise
            end = calls[k + 1][0] if k + 1 < len(calls) else n
            got = [on_error(e) for _ in range(end - b)]
        finally:
            pool.done(a)
        out[b:b + len(got)] = got
        if on_batch is not None:
            on_batch(got)
    return out
