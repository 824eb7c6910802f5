"""The shard scheduler of the encode and decode jobs: shards are submitted
to the actor pools while fewer than a window are in flight, and finished in
the order submitted, so that every actor has work queued while the driver
holds the results of at most a window of shards (memory is bounded by the
window, not by the number of shards)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable


def window_for(*pools) -> int:
    """Twice the largest pool (None: a pool the job does not use)."""
    return 2 * max(len(p.actors) for p in pools if p is not None)


def run_shards(shards: Iterable, window: int, submit: Callable, *finish: Callable,
               skip: Callable | None = None) -> int:
    """Run ``shards`` through the pools, in order. ``submit(shard)`` submits
    a shard's work and returns its handle (None: nothing left to do);
    ``finish[k](shard, handle)`` waits for the step before and returns the
    next step's handle (each step has a window of its own). ``skip(shard)``,
    asked just before a shard is submitted, true: it was published meanwhile
    (by another driver), leave it out. Returns the number left out."""
    todo = deque(shards)
    steps = [deque() for _ in finish]  # steps[k]: (shard, handle) waiting for finish[k]
    skipped = 0

    def advance(k: int) -> None:
        shard, handle = steps[k].popleft()
        out = finish[k](shard, handle)
        if out is not None and k + 1 < len(steps):
            steps[k + 1].append((shard, out))

    while todo or any(steps):
        while todo and len(steps[0]) < window:
            shard = todo.popleft()
            if skip is not None and skip(shard):
                skipped += 1
                continue
            handle = submit(shard)
            if handle is not None:
                steps[0].append((shard, handle))
        # the oldest shard of the earliest step moves on; a later step past its window is drained to it
        k = next((k for k, s in enumerate(steps) if s), None)
        if k is None:
            continue
        advance(k)
        for j in range(k + 1, len(steps)):
            while len(steps[j]) > window:
                advance(j)
    return skipped
