"""A fixed-size pool of Ray actors with least-loaded dispatch, that survives
lost actors.

Calls are queued on the ready actor that has the fewest in flight; the caller
bounds how much it submits (the job keeps a window of shards in flight), so
memory stays bounded and every actor stays busy. The actors are spread over
the cluster's nodes (Ray's ``SPREAD``), so that a lost node takes part of
each pool, not a whole pool.

An actor that is lost (its process killed, its node gone) is not restarted
by Ray: the pool itself sees the loss when one of its calls fails, starts a
replacement (same resources, any node) and hands the call, and every other
call that was queued on the lost actor, to the actors that are ready; a
replacement gets work once it answers. Where the cluster has no room left for
a replacement (a node lost, no autoscaler), the others go on alone; a CPU
pool left with no actor at all for ``SEMARC_REPLACE_GRACE_S`` seconds (60)
gets one with no CPU reservation, so that the job finishes, slower, on the
nodes that remain. A call whose actor process died on a live node (the call
itself may be what kills it) runs on at most ``MAX_TRIES`` actors before its
failure is final; losses with a node do not count against it. A pool
replaces at most ``2 * size + 2`` actors, and a pool with no actor ready for
``SEMARC_ACTOR_WAIT_S`` seconds (900) fails the job.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field

from .errors import JobError

log = logging.getLogger("semarc.pool")

MAX_TRIES = 3      # actors a call may kill (their process died, their node lives) before its failure is final
MAX_ATTEMPTS = 20  # and times it may be sent at all


class PoolError(JobError):
    """A pool cannot go on: its actors lost and none could be started again."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _is_loss(e: BaseException) -> bool:
    """A failure of the actor or of the node it ran on, not of the work: the
    call may succeed on another actor. An actor whose constructor raised (a
    model that cannot load) is not a loss; nor is an exception of the method."""
    import ray.exceptions as rex

    if isinstance(e, rex.RayActorError):
        return not e.actor_init_failed
    if isinstance(e, (rex.ObjectLostError, rex.WorkerCrashedError, rex.NodeDiedError)):
        return True
    if isinstance(e, rex.RayTaskError):  # a call whose argument (another pool's result) was lost with its node
        cause = getattr(e, "cause", None)
        return isinstance(cause, (rex.ObjectLostError, rex.RayActorError)) and not getattr(
            cause, "actor_init_failed", False)
    return False


def _counts_against_call(e: BaseException) -> bool:
    """A loss that the call may have caused: its actor's process died (or
    crashed) while the node lived. Losses with a node, and actors that stopped
    answering, are the cluster's."""
    import ray.exceptions as rex

    if isinstance(e, rex.WorkerCrashedError):
        return True
    return isinstance(e, rex.ActorDiedError) and not e.preempted and "node has died" not in str(e)


@dataclass(eq=False)
class _Slot:
    handle: object
    ready: bool
    ping: object = None         # a first call, while the actor starts
    inflight: int = 0
    started: float = field(default_factory=time.time)
    token: bool = False         # started with no CPU reservation (see the module docstring)


@dataclass(eq=False)
class Call:
    """One call submitted to a pool: what to call (so that it can be sent
    again), and where it runs now."""
    pool: "ActorPool"
    method: str
    args: tuple
    ref: object = None
    slot: _Slot | None = None
    tries: int = 0      # losses that count against the call (``_counts_against_call``)
    attempts: int = 0   # times it was sent again


class ActorPool:
    def __init__(self, cls, size: int, num_cpus: float = 1, num_gpus: float = 0, args: tuple = (),
                 kwargs: dict | None = None, name: str = "pool") -> None:
        import ray

        self._cls = ray.remote(cls)
        self._opts = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_task_retries=0,
                          scheduling_strategy="SPREAD")
        self._args, self._kwargs = args, dict(kwargs or {})
        self.name = name
        self.size = max(1, size)
        self.max_replacements = 2 * self.size + 2
        self.actors_lost = 0
        self.calls_resubmitted = 0
        self.replacements = 0
        self._rr = itertools.count()
        # the first actors take work at once (the job sized the pools to fit the cluster)
        self._slots = [_Slot(self._new(), ready=True) for _ in range(self.size)]

    # -- actors

    def _new(self, **opts):
        return self._cls.options(**{**self._opts, **opts}).remote(*self._args, **self._kwargs)

    def _replace(self, token: bool = False) -> None:
        if self.replacements >= self.max_replacements and not token:
            return
        self.replacements += 1
        h = self._new(num_cpus=0) if token else self._new()
        self._slots.append(_Slot(h, ready=False, ping=h.meter.remote(), token=token))

    @property
    def actors(self) -> list:
        """The pool's actors (ready or starting)."""
        return [s.handle for s in self._slots]

    def _lost(self, slot: _Slot | None, err: BaseException) -> None:
        """``slot``'s actor is gone: drop it and start a replacement."""
        if slot is None or slot not in self._slots:
            return  # already replaced (another of its calls failed first)
        import ray

        self._slots.remove(slot)
        self.actors_lost += 1
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - gone already
            pass
        why = str(err).strip().splitlines()
        log.warning("%s pool: an actor was lost (%s: %s); its calls go to the other actors, a replacement is "
                    "starting", self.name, type(err).__name__, why[0][:200] if why else "")
        self._replace()

    def _poll(self, timeout: float = 0) -> None:
        """Mark the starting actors that answered as ready (waiting up to
        ``timeout`` seconds for one); drop those that failed to start."""
        import ray

        starting = [s for s in self._slots if not s.ready]
        if not starting:
            return
        done, _ = ray.wait([s.ping for s in starting], num_returns=1, timeout=timeout)
        done, _ = ray.wait([s.ping for s in starting], num_returns=len(starting), timeout=0) if done else ([], [])
        for s in starting:
            if s.ping not in done:
                continue
            try:
                ray.get(s.ping)
                s.ready, s.ping = True, None
                log.warning("%s pool: a replacement actor is ready", self.name)
            except ray.exceptions.RayError as e:
                if _is_loss(e):
                    self._lost(s, e)
                else:  # it cannot start (its model does not load): as the first actors would have failed
                    self._slots.remove(s)
                    raise

    def _ready(self) -> list[_Slot]:
        self._poll()
        ready = [s for s in self._slots if s.ready]
        if ready:
            return ready
        t0 = time.time()
        grace = _env_float("SEMARC_REPLACE_GRACE_S", 60)
        limit = _env_float("SEMARC_ACTOR_WAIT_S", 900)
        log.warning("%s pool: no actor is ready; waiting for a replacement to start", self.name)
        while True:
            if not self._slots:
                raise PoolError(f"the {self.name} pool lost all its actors ({self.actors_lost} lost) and may start "
                                f"no more; published shards are kept: rerun the same command to resume")
            self._poll(timeout=2)
            ready = [s for s in self._slots if s.ready]
            if ready:
                return ready
            waited = time.time() - t0
            if waited > grace and self._opts["num_gpus"] == 0 and not any(s.token for s in self._slots):
                log.warning("%s pool: no replacement could be placed in %.0f s (the cluster lost capacity?); "
                            "starting one with no CPU reservation", self.name, waited)
                self._replace(token=True)
            if waited > limit:
                raise PoolError(f"the {self.name} pool has had no actor for {waited:.0f} s: its actors were lost "
                                f"and no replacement could be placed; published shards are kept: rerun the same "
                                f"command on a cluster with room to resume")

    # -- calls

    def _dispatch(self, call: Call) -> None:
        ready = self._ready()
        n = len(ready)
        slot = min(enumerate(ready), key=lambda x: (x[1].inflight, (next(self._rr) + x[0]) % n))[1]
        args = tuple(a.ref if isinstance(a, Call) else a for a in call.args)
        call.ref = getattr(slot.handle, call.method).remote(*args)
        call.slot = slot
        slot.inflight += 1

    def submit(self, method: str, *args) -> Call:
        """Call ``method`` on the least-loaded ready actor; ``result`` gets what
        it returns. An argument that is a ``Call`` (of any pool) is passed as
        its result, straight from the object store."""
        call = Call(self, method, args)
        self._dispatch(call)
        return call

    def done(self, call: Call) -> None:
        """The caller no longer waits for ``call`` here (its result has been
        fetched, or handed to another pool's call)."""
        if call.slot is not None:
            call.slot.inflight -= 1
            call.slot = None

    def result(self, call: Call):
        """``call``'s result. A call whose actor (or whose argument's actor)
        was lost is sent again, to a ready actor (see ``MAX_TRIES``); other
        failures raise (``ray.exceptions.RayError``)."""
        import ray

        while True:
            try:
                got = ray.get(call.ref)
            except ray.exceptions.RayError as e:
                slot = call.slot
                self.done(call)
                if not _is_loss(e):
                    raise
                if isinstance(e, ray.exceptions.RayActorError):
                    self._lost(slot, e)
                call.tries += _counts_against_call(e)
                call.attempts += 1
                if call.tries >= MAX_TRIES or call.attempts >= MAX_ATTEMPTS:
                    raise
                if not isinstance(e, ray.exceptions.RayActorError):
                    # an argument that was another pool's result, lost with its node: computed again
                    for up in call.args:
                        if isinstance(up, Call):
                            up.pool._dispatch(up)
                            up.pool.done(up)
                self.calls_resubmitted += 1
                self._dispatch(call)
                continue
            self.done(call)
            return got

    def meters(self) -> list[dict]:
        """Every ready actor's ``Metered.meter()`` (an actor that cannot answer is left out)."""
        import ray

        self._poll()
        refs = [s.handle.meter.remote() for s in self._slots if s.ready]
        out = []
        for r in refs:
            try:
                out.append(ray.get(r, timeout=30))
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue
        return out

    def first(self, method: str, *args):
        """``method``'s result from one actor (a model that cannot load fails here)."""
        return self.result(self.submit(method, *args))


def stage_report(pools: dict, wall_s: float) -> dict:
    """{stage name: ``workers.meter.stage_summary``, with the actors the pool
    lost and the calls it sent again} for the pools of a job (None entries
    skipped); ``wall_s``: how long the pools have been up."""
    from .meter import stage_summary

    return {name: {**stage_summary(p.meters(), wall_s), "actors_lost": p.actors_lost,
                   "calls_resubmitted": p.calls_resubmitted}
            for name, p in pools.items() if p is not None}


def codec_pools(specs: dict, caption_model: str, caption_profile: str, codec: str, threads: int,
                storage_options: dict, latent_steps: int = 0,
                latent_loss: str | None = None) -> tuple[ActorPool, ActorPool]:
    """The caption-coding and image-coding pools of a job, sized by ``specs``
    (``cluster.ray_cluster.size_pools``); ``latent_steps``, ``latent_loss``: the
    image encoders' latent search (encode jobs)."""
    from .caption_worker import CaptionWorker
    from .image_worker import ImageWorker

    cs, ims = specs["caption"], specs["image"]
    cap = ActorPool(CaptionWorker, cs.size, cs.num_cpus, cs.num_gpus,
                    args=(caption_model, caption_profile, threads, cs.batch_size), name="caption")
    img = ActorPool(ImageWorker, ims.size, ims.num_cpus, ims.num_gpus,
                    args=(codec, threads, storage_options, True, "auto", latent_steps, latent_loss), name="image")
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
    """Submit ``items`` in batches; returns [(offset, call)]."""
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
    """The results of ``submit_batches`` calls, in input order (length ``n``);
    calls of lost actors are sent again (``ActorPool.result``). With
    ``on_error``, a call that failed for good yields ``on_error(exception)``
    for each of its items instead of raising."""
    import ray

    out: list = [None] * n
    for k, (b, call) in enumerate(calls):
        try:
            got = pool.result(call)
        except ray.exceptions.RayError as e:
            if on_error is None:
                raise
            end = calls[k + 1][0] if k + 1 < len(calls) else n
            got = [on_error(e) for _ in range(end - b)]
        out[b:b + len(got)] = got
        if on_batch is not None:
            on_batch(got)
    return out
