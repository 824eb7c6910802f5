"""How busy an actor was: the seconds it spent in its work methods and the
items they handled, so that a job can say which stage bounds it (the final
report's per-stage lines, ``semarc encode --report``) and a user can balance
the pools (docs/cluster.md).

A worker class derives from ``Metered`` and marks its work methods with
``@metered``; the driver calls ``meter()`` on every actor at the end of the
job. An actor that Ray restarted counts from its restart."""

from __future__ import annotations

import functools
import time


def metered(method):
    """Count the time spent in ``method`` and the length of its first argument (a batch)."""

    @functools.wraps(method)
    def wrapper(self, items, *args, **kwargs):
        t = time.perf_counter()
        try:
            return method(self, items, *args, **kwargs)
        finally:
            self._busy_s += time.perf_counter() - t
            self._calls += 1
            self._items += len(items)

    return wrapper


class Metered:
    _busy_s = 0.0
    _calls = 0
    _items = 0

    def meter(self) -> dict:
        """{"busy_s", "calls", "items"} since the actor started."""
        return {"busy_s": self._busy_s, "calls": self._calls, "items": self._items}


def stage_summary(meters: list[dict], wall_s: float) -> dict:
    """One stage's actors -> {"actors", "busy_s" (sum), "items", "s_per_item",
    "utilisation" (busy time / (actors x wall time))}."""
    busy = sum(m["busy_s"] for m in meters)
    items = sum(m["items"] for m in meters)
    return {"actors": len(meters), "busy_s": round(busy, 3), "calls": sum(m["calls"] for m in meters),
            "items": items, "s_per_item": round(busy / items, 6) if items else None,
            "utilisation": round(busy / (len(meters) * wall_s), 3) if meters and wall_s > 0 else None}
