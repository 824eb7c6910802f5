"""A small bit-precise arithmetic coder over integer frequency tables.

Exact big-integer arithmetic (Python ints), so there is no carry or
underflow handling to get wrong: the interval is ``[low, low + rng)`` in units
of ``2**-scale``; it is renormalised so that ``rng >= 2**PRECISION``.

Termination is optimal to the bit: the encoder emits the shortest bit string
whose value, read with infinitely many zero bits after it, lies in the final
interval. The decoder reads zeros past the end of its input. So a stream
costs ``ceil(information + <= 2 bits)`` bytes, with no length field and no
32-bit word flushing. The decoder can also confirm that a stream is the
*canonical* encoding of what it decoded (``Decoder.is_canonical``), which
catches most corruptions that still happen to decode to something.
"""

from __future__ import annotations

import bisect

import torch

PRECISION = 40  # bits of interval width kept at least; frequency totals must be < 2**(PRECISION - 8)


class _Interval:
    """The coding interval ``[low, low + rng)`` in units of ``2**-scale``."""

    def __init__(self) -> None:
        self.low = 0
        self.rng = 1 << PRECISION
        self.scale = PRECISION

    def _split(self, cum_lo: int, cum_hi: int, total: int) -> tuple[int, int]:
        return (self.rng * cum_lo) // total, (self.rng * cum_hi) // total

    def _narrow(self, a: int, b: int) -> None:
        self.low += a
        self.rng = b - a
        while self.rng < (1 << PRECISION):
            self.low <<= 1
            self.rng <<= 1
            self.scale += 1


class Encoder(_Interval):
    def encode(self, cum_lo: int, cum_hi: int, total: int) -> None:
        if not (0 <= cum_lo < cum_hi <= total):
            raise ValueError(f"bad symbol interval [{cum_lo}, {cum_hi}) of {total}")
        self._narrow(*self._split(cum_lo, cum_hi, total))

    def finish(self) -> bytes:
        return _shortest(self.low, self.low + self.rng, self.scale)


def _shortest(lo: int, hi: int, scale: int) -> bytes:
    """Shortest byte string whose value (zero-padded) lies in [lo, hi) at ``scale`` bits."""
    if lo == 0:
        return b""
    for k in range(1, scale + 1):
        unit = 1 << (scale - k)
        m = -(-lo // unit)  # ceil
        if m * unit < hi:
            nbytes = (k + 7) // 8
            return (m << (8 * nbytes - k)).to_bytes(nbytes, "big")
    raise AssertionError("unreachable: the interval is never empty")


class Decoder(_Interval):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = bytes(data)
        self._value = int.from_bytes(self.data, "big") if self.data else 0
        self._nbits = 8 * len(self.data)

    def _code(self) -> int:
        s, n = self.scale, self._nbits
        return (self._value << (s - n)) if s >= n else (self._value >> (n - s))

    def target(self, total: int) -> int:
        """A frequency value within the next symbol's interval (for table search)."""
        return ((self._code() - self.low) * total) // self.rng

    def bounds(self, cum: int, total: int) -> int:
        """Offset of cumulative frequency ``cum`` in the current interval."""
        return (self.rng * cum) // total

    def consume(self, cum_lo: int, cum_hi: int, total: int) -> None:
        a, b = self._split(cum_lo, cum_hi, total)
        if not (a <= self._code() - self.low < b):
            raise ValueError("arithmetic decoder lost sync: symbol outside its interval")
        self._narrow(a, b)

    def offset(self) -> int:
        return self._code() - self.low

    def is_canonical(self) -> bool:
        return _shortest(self.low, self.low + self.rng, self.scale) == self.data


def decode_symbol(dec: Decoder, cum) -> int:
    """Decode one symbol given a cumulative table ``cum`` (len V+1, cum[0]=0,
    cum[-1]=total; a sequence of ints or a 1-D integer tensor with searchsorted)."""
    total = int(cum[-1])
    t = dec.target(total)
    off = dec.offset()
    # t is within one of the true symbol's cumulative range; search, then fix up
    if isinstance(cum, torch.Tensor):
        c = int(torch.searchsorted(cum, torch.tensor([t], dtype=cum.dtype), right=True)[0]) - 1
    else:
        c = bisect.bisect_right(cum, t) - 1
    n = len(cum) - 1
    c = max(0, min(c, n - 1))
    while c + 1 < n and dec.bounds(int(cum[c + 1]), total) <= off:
        c += 1
    while c > 0 and dec.bounds(int(cum[c]), total) > off:
        c -= 1
    dec.consume(int(cum[c]), int(cum[c + 1]), total)
    return c
