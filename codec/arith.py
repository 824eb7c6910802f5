"""A small bit-precise arithmetic coder over integer frequency tables.

Exact big-integer arithmetic (Python ints), so there is no carry or
underflow handling to get wrong: the interval is ``[low, low + rng)`` in units
of ``2**-scale``; it is renormalised so that ``rng >= 2**PRECISION``.

Termination spends no whole words: the encoder picks the shortest *dyadic*
interval ``[m, m + 1) * 2**-k`` inside the final interval and writes the ``k``
bits of ``m``, then fills the stream up to the next byte boundary (at least
``check_bits`` more bits) with the top bits of a caller's 32-bit check value.
Any value in a dyadic interval decodes the same, so the decoder reads the check
bits as part of the code (and zeros past the end), and at the end confirms that
the stream is exactly the one the encoder would have written for what it decoded:
same length, same ``m``, same check bits (``Decoder.verify_end``). A stream costs
``ceil((information + ~1.5 bits + check_bits) / 8)`` bytes, with no length field.
"""

from __future__ import annotations

import bisect

import torch

PRECISION = 64  # bits of interval width kept at least; frequency totals must be < 2**(PRECISION - 8)
MAX_TOTAL = 1 << (PRECISION - 8)


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

    def _end(self, check: int, check_bits: int) -> tuple[int, int]:
        """(number of bytes, stream value) of the terminated stream."""
        if not 0 <= check_bits <= 25:
            raise ValueError("check_bits must be in [0, 25]")
        k, m = _dyadic(self.low, self.low + self.rng, self.scale)
        nbytes = (k + check_bits + 7) // 8
        free = 8 * nbytes - k
        return nbytes, (m << free) | ((check & 0xFFFFFFFF) >> (32 - free) if free else 0)


def _dyadic(lo: int, hi: int, scale: int) -> tuple[int, int]:
    """Smallest ``k`` (and its ``m``) with ``[m, m+1) * 2**(scale-k)`` inside ``[lo, hi)``."""
    for k in range(0, scale + 1):
        unit = 1 << (scale - k)
        m = -(-lo // unit)  # ceil
        if (m + 1) * unit <= hi:
            return k, m
    raise AssertionError("unreachable: the interval is never empty")


class Encoder(_Interval):
    def encode(self, cum_lo: int, cum_hi: int, total: int) -> None:
        if not (0 <= cum_lo < cum_hi <= total <= MAX_TOTAL):
            raise ValueError(f"bad symbol interval [{cum_lo}, {cum_hi}) of {total}")
        self._narrow(*self._split(cum_lo, cum_hi, total))

    def finish(self, check: int = 0, check_bits: int = 0) -> bytes:
        nbytes, value = self._end(check, check_bits)
        return value.to_bytes(nbytes, "big") if nbytes else b""


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

    def verify_end(self, check: int = 0, check_bits: int = 0) -> bool:
        """True iff the input is byte for byte the stream that the encoder writes
        for the symbols decoded so far and this check value."""
        nbytes, value = self._end(check, check_bits)
        return nbytes == len(self.data) and value == self._value


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
