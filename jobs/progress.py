"""A live progress bar (records/s, ETA, errors) on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool = True, done: int = 0, desc: str = "records") -> None:
        self.total, self.done, self.errors = total, done, 0
        self.t0 = time.time()
        self._start_done = done
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc=desc, file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, errors: int = 0) -> None:
        self.done += n
        self.errors += errors
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(errors=self.errors, refresh=False)

    def rate(self) -> float:
        dt = time.time() - self.t0
        return (self.done - self._start_done) / dt if dt > 0 else 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
