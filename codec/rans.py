"""A bounds-checked decoder for CompressAI's rANS bitstreams.

CompressAI's C++ ``RansDecoder`` trusts its input: it reads 32-bit words
wherever the decoding state leads, so a string shorter than the symbols it is
asked for (a corrupt or crafted record) makes it read past the end of the
buffer, and can crash the process. This module decodes the same format
(``docs/format.md``, "Entropy-coded strings") and never reads outside the bytes
it is given. It also refuses what no encoder writes, so corruption fails loudly
instead of decoding to other symbols:

* a string whose length is not a whole number of 32-bit words, or under two;
* a table index outside the tables;
* a renormalisation that needs a word past the end (the string is too short
  for the symbols asked of it);
* a bypass count over 8 nibbles (more than an int32 symbol needs) or a raw
  value with a leading zero nibble (the encoder writes the fewest nibbles);
* a string that does not end where the decoding ends, in the encoder's
  initial state (rANS decoding runs the encoder backwards: after the last
  symbol the state is the encoder's start value and every word was read).

The decoder is C, compiled on first use (``cbuild``, portable flags); without
a C compiler, or with ``SEMARC_RANS=python``, the same algorithm runs in
Python (slower, identical results). Both are checked against CompressAI's
decoder in the tests.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import cbuild

PRECISION = 16           # CDF tables sum to 2^16
BYPASS_BITS = 4          # bypass coding writes nibbles
MAX_BYPASS_NIBBLES = 8   # an int32 symbol needs at most 8
RANS_L = 1 << 31         # lower bound of the 64-bit state; the encoder starts here

_ERRORS = {
    1: "the string is not a whole number of 32-bit words (at least two)",
    2: "a table index is outside the tables",
    3: "the string ends before its symbols do (truncated or corrupt)",
    4: "a bypass-coded value is malformed",
    5: "the string does not end where its symbols do (extra or corrupt bytes)",
}


class RansError(ValueError):
    """The string cannot be the encoder's output for these tables and indexes."""


_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
#define PREC 16
#define MASK 0xffffu
#define L (1ull << 31)
static inline uint32_t word(const uint8_t *b, size_t i) {
  b += 4 * i;
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
/* returns 0, or an error code (rans.py's _ERRORS); *done: symbols written */
int semarc_rans_decode(const uint8_t *buf, size_t nbytes, const int32_t *idx, size_t n,
                       const int32_t *cdf, const int64_t *start, const int32_t *len, const int32_t *off,
                       int32_t ntab, int32_t *out, size_t *done) {
  *done = 0;
  if (nbytes % 4 || nbytes < 8) return 1;
  size_t nw = nbytes / 4, p = 2;
  uint64_t x = (uint64_t)word(buf, 0) | (uint64_t)word(buf, 1) << 32;
  for (size_t i = 0; i < n; i++) {
    int32_t t = idx[i];
    if (t < 0 || t >= ntab) return 2;
    const int32_t *c = cdf + start[t];
    int32_t m = len[t];
    uint32_t cum = (uint32_t)(x & MASK);
    int32_t lo = 0, hi = m - 1;  /* c[0] = 0 <= cum < c[m - 1] = 2^16 */
    while (hi - lo > 1) {
      int32_t mid = lo + (hi - lo) / 2;
      if ((uint32_t)c[mid] <= cum) lo = mid; else hi = mid;
    }
    uint32_t st = (uint32_t)c[lo], fr = (uint32_t)(c[lo + 1] - c[lo]);
    x = (uint64_t)fr * (x >> PREC) + (x & MASK) - st;
    if (x < L) {
      if (p >= nw) return 3;
      x = (x << 32) | word(buf, p++);
    }
    int64_t value = lo;
    if (lo == m - 2) {  /* bypass: a count of nibbles in runs of 15, then the nibbles */
      uint32_t v, nb = 0, raw = 0;
      do {
        v = (uint32_t)(x & 15u); x >>= 4;
        if (x < L) { if (p >= nw) return 3; x = (x << 32) | word(buf, p++); }
        nb += v;
        if (nb > 8) return 4;
      } while (v == 15);
      for (uint32_t j = 0; j < nb; j++) {
        v = (uint32_t)(x & 15u); x >>= 4;
        if (x < L) { if (p >= nw) return 3; x = (x << 32) | word(buf, p++); }
        raw |= v << (4 * j);
        if (j == nb - 1 && v == 0) return 4;
      }
      int32_t r = (int32_t)raw;
      value = r >> 1;
      if (r & 1) value = -value - 1; else value += m - 2;
    }
    out[i] = (int32_t)(uint32_t)(uint64_t)(value + off[t]);
    *done = i + 1;
  }
  if (x != L || p != nw) return 5;
  return 0;
}
"""

def _build():
    lib = cbuild.build("semarc_rans", _SOURCE, ["-O2", "-fno-strict-aliasing"])
    dp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.semarc_rans_decode.argtypes = [dp, sz, dp, sz, dp, dp, dp, dp, ctypes.c_int32, dp, dp]
    lib.semarc_rans_decode.restype = ctypes.c_int
    return lib


_rans = cbuild.Lazy(_build, "SEMARC_RANS", "python")


def _load():
    return _rans.get()


def implementation() -> str:
    """``"c"`` or ``"python (<why>)"``."""
    return "c" if _load() is not None else f"python ({_rans.error})"


class Tables:
    """Integer CDF tables as CompressAI's coder takes them: ``cdfs[t]`` (the
    first ``lengths[t]`` entries used), ``lengths`` and ``offsets`` per table.
    Checked once: each used row runs strictly upwards from 0 to 2^16 (every
    symbol has a nonzero frequency), at least 2 entries long."""

    def __init__(self, cdfs, lengths, offsets) -> None:
        lengths = [int(n) for n in np.asarray(lengths).reshape(-1)]
        offsets = [int(o) for o in np.asarray(offsets).reshape(-1)]
        cdfs = np.asarray(cdfs)
        if cdfs.ndim != 2 or len(lengths) != cdfs.shape[0] or len(offsets) != cdfs.shape[0]:
            raise ValueError("CDF tables: rows, lengths and offsets disagree")
        rows = []
        for row, n in zip(cdfs, lengths):
            if not 2 <= n <= cdfs.shape[1]:
                raise ValueError(f"CDF table length {n} outside 2..{cdfs.shape[1]}")
            r = np.asarray(row[:n], dtype=np.int64)
            if r[0] != 0 or r[-1] != 1 << PRECISION or not bool(np.all(np.diff(r) > 0)):
                raise ValueError("malformed CDF table (must rise strictly from 0 to 2^16)")
            rows.append(r.astype(np.int32))
        self.n = len(rows)
        self.cdf = np.ascontiguousarray(np.concatenate(rows)) if rows else np.zeros(0, np.int32)
        self.start = np.ascontiguousarray(np.cumsum([0] + lengths[:-1], dtype=np.int64))
        self.length = np.ascontiguousarray(np.array(lengths, dtype=np.int32))
        self.offset = np.ascontiguousarray(np.array(offsets, dtype=np.int32))
        self._rows = rows

    def decode(self, string: bytes, indexes: np.ndarray) -> np.ndarray:
        """The int32 symbols of ``string``, one per table index in ``indexes``
        (flat). Raises ``RansError`` on anything the encoder cannot have written."""
        idx = np.ascontiguousarray(np.asarray(indexes, dtype=np.int32).reshape(-1))
        string = bytes(string)
        lib = _load()
        if lib is None:
            return self._decode_py(string, idx)
        out = np.empty(len(idx), dtype=np.int32)
        done = ctypes.c_size_t(0)
        buf = ctypes.c_char_p(string)
        rc = lib.semarc_rans_decode(buf, len(string), idx.ctypes.data, len(idx), self.cdf.ctypes.data,
                                    self.start.ctypes.data, self.length.ctypes.data, self.offset.ctypes.data,
                                    self.n, out.ctypes.data, ctypes.byref(done))
        if rc:
            raise RansError(f"{_ERRORS.get(rc, 'error')} (after {done.value} of {len(idx)} symbols)")
        return out

    def _decode_py(self, string: bytes, idx: np.ndarray) -> np.ndarray:
        nb = len(string)
        if nb % 4 or nb < 8:
            raise RansError(_ERRORS[1])
        words = np.frombuffer(string, dtype="<u4").tolist()
        nw, p = len(words), 2
        x = words[0] | words[1] << 32
        out = np.empty(len(idx), dtype=np.int32)
        mask = (1 << PRECISION) - 1

        def fail(code: int, i: int):
            return RansError(f"{_ERRORS[code]} (after {i} of {len(idx)} symbols)")

        def bits(x, p, i):
            v = x & 15
            x >>= 4
            if x < RANS_L:
                if p >= nw:
                    raise fail(3, i)
                x = (x << 32) | words[p]
                p += 1
            return v, x, p

        for i, t in enumerate(idx.tolist()):
            if not 0 <= t < self.n:
                raise fail(2, i)
            c = self._rows[t]
            m = len(c)
            cum = x & mask
            s = int(np.searchsorted(c, cum, side="right")) - 1
            st, fr = int(c[s]), int(c[s + 1]) - int(c[s])
            x = fr * (x >> PRECISION) + cum - st
            if x < RANS_L:
                if p >= nw:
                    raise fail(3, i)
                x = (x << 32) | words[p]
                p += 1
            value = s
            if s == m - 2:
                n_b = 0
                while True:
                    v, x, p = bits(x, p, i)
                    n_b += v
                    if n_b > MAX_BYPASS_NIBBLES:
                        raise fail(4, i)
                    if v != 15:
                        break
                raw = 0
                for j in range(n_b):
                    v, x, p = bits(x, p, i)
                    raw |= v << (4 * j)
                    if j == n_b - 1 and v == 0:
                        raise fail(4, i)
                r = raw - (1 << 32) if raw >= 1 << 31 else raw
                value = r >> 1
                value = -value - 1 if r & 1 else value + m - 2
            out[i] = ((value + int(self.offset[t]) + (1 << 31)) % (1 << 32)) - (1 << 31)
        if x != RANS_L or p != nw:
            raise fail(5, len(idx))
        return out
