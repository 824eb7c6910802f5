"""Lossless caption coding: arithmetic coding driven by a language model.

``CaptionCoder.encode_batch(texts)`` -> one ``CodedCaption`` per text, whose
``payload`` is the whole caption section as stored (docs/format.md): a single
arithmetic-coded stream holding

1. a *mode* symbol (``MODE_FREQ`` of ``2**16``): LM coding on grid A (offset 1/2,
   costs 0.006 bit), LM coding on grid B (offset 0, 8 bits), or the fallback
   (16 bits);
2. LM modes: the tokens and the end token under the model's quantised
   next-token distribution; fallback: the raw-deflate bytes of the UTF-8 text,
   uniform (8 bits each);
3. the termination, whose free bits (at least ``check_bits``) carry the top
   bits of ``crc32(text)``: a stream decodes only if it is exactly the stream
   its decoded text would give (``arith.Decoder.verify_end``).

There is no header byte, length field or separate check byte.

The ``portable`` profile decodes bit-exactly on any machine, batch size,
padding or thread count:

1. logits come from a float64 forward pass. The decoder runs the fixed
   prefix, then one KV-cache step per token, rows leaving the batch after their
   end token (``_Stepper``). The encoder, which knows every token, runs one
   prefill pass per batch (padded; long captions a few at a time) and the
   output layer on chunks of (caption, position) rows (Kodak captions: 1.5x
   less time than the steps; short COCO captions: about the same). At load,
   the coder measures how far the two paths' logits differ on a test caption
   (SmolLM2: 1.1e-13 nat) and encodes by prefill only if that is at least 10x
   below the guard band (item 2); otherwise, and with
   ``encode_path="steps"``, the encoder runs the decoder's steps. The
   comparison (a few KV-cache steps, ~1.2 s on a CPU) runs in a thread beside
   the first batch, which is encoded by prefill meanwhile and, should the
   comparison fail, encoded again by steps before anything is returned;
2. each logit is placed on a grid of ``1/64`` nat below the row maximum,
   ``x = (max - logit) * 64 + offset``, ``k = floor(x)``. Across batch shapes,
   thread counts and devices, float64 logits of this model differ by ~1e-13
   nat, ~1e-11 grid units. The encoder checks every logit of every step
   against a *guard band*: if any ``x`` lies within ``2**-30`` grid units
   (~1.5e-11 nat, 100x the noise) of a grid boundary that matters, that grid
   could round differently elsewhere, and the caption is coded on the other
   grid (offset 0 instead of 1/2), whose boundaries are half a unit away; if both
   are unsafe (rare: both grids fail together about once in 1e5 to 1e6
   captions), by the fallback;
3. from ``k`` on everything is integer: ``w = EXP_TABLE[min(k, K_MAX)]`` (a
   table of ``floor(2**30 * exp(-k/64))`` computed with exact decimal
   arithmetic, 0 at ``K_MAX``), ``freq = 1 + w``, total ``V + sum(w)``.

Every caption is decoded right after encoding (``verify``): ``"stream"`` (the
default) runs the arithmetic decoder over the written bytes against the
integer tables of the pass that encoded them, which every decoder recomputes
exactly (its logits differ from the encoder's by far less than the guard
band): every symbol, the end and the check must come back; ``"full"``
decodes the bytes from scratch with a second model pass in other batches. A
caption that does not come back is stored by the fallback and flagged. Texts that the tokenizer cannot round-trip, that
contain the end token's text, or that are longer than ``max_tokens`` tokens
also use the fallback (docs/format.md).
"""

from __future__ import annotations

import concurrent.futures
import decimal
import hashlib
import json
import zlib
from dataclasses import dataclass

import torch

from . import arith
from . import lm as lm_mod
from . import native

STEP_DENOM = 64            # logit grid: 1/64 nat
K_MAX = 40 * STEP_DENOM    # exp(-40) ~ 4e-18: everything at or below gets the floor frequency 1
W_BITS = 30
GUARD = 2.0 ** -30         # grid units: the encoder's safety band around grid boundaries
GRIDS = 2                  # grid A: k = floor(x + 1/2); grid B: k = floor(x)
MODE_TOTAL = 1 << 16
MODE_FREQ = (MODE_TOTAL - 257, 256, 1)  # LM on grid A, LM on grid B, fallback
MODE_CUM = [0, MODE_FREQ[0], MODE_FREQ[0] + MODE_FREQ[1], MODE_TOTAL]
MODE_LM_A, MODE_LM_B, MODE_FALLBACK = 0, 1, 2
INFO_SLACK_BITS = 32
UNIFORM_BYTE = list(range(257))


def _exp_table() -> torch.Tensor:
    ctx = decimal.Context(prec=60)
    scale = decimal.Decimal(1 << W_BITS)
    vals = [int((ctx.exp(decimal.Decimal(-k) / STEP_DENOM) * scale).to_integral_value(rounding=decimal.ROUND_FLOOR))
            for k in range(K_MAX)]
    return torch.tensor(vals + [0], dtype=torch.int64)


EXP_TABLE = _exp_table()
RULE = (f"q2:grid=1/{STEP_DENOM}nat,offsets=1/2|0,guard=2^-30,kmax={K_MAX},w=floor(2^{W_BITS}exp(-k/64)),"
        f"freq=1+w,modes={MODE_FREQ}/2^16")

PROFILES = {
    # prefix: the fixed text context every caption is coded after
    "portable": {"precision": torch.float64, "prefix": "<|im_start|>assistant\n", "max_tokens": 1024,
                 "check_bits": 2},
}


def _grid_x(logits: torch.Tensor):
    lg = logits.to(torch.float64)
    x = (lg.max(dim=-1, keepdim=True).values - lg) * STEP_DENOM
    fl = torch.floor(x)
    return x, fl, x - fl  # x - floor(x) is exact in floating point


def _grid_k(fl: torch.Tensor, f: torch.Tensor, grid: int) -> torch.Tensor:
    kb = fl.clamp(0, K_MAX).to(torch.int64)
    return kb if grid == 1 else (kb + (f >= 0.5)).clamp_(max=K_MAX)  # B: floor(x); A: floor(x + 1/2)


def grid_weights(logits: torch.Tensor, grid: int) -> torch.Tensor:
    """[n, V] float logits -> int64 weights ``w`` [n, V] on grid 0 (A) or 1 (B); ``freq = 1 + w``."""
    f, kb = _frac_and_kb(logits)
    return EXP_TABLE[_ka(f, kb) if grid == 0 else kb]


def _frac_and_kb(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f = x - floor(x)`` and grid B's index ``min(floor(x), K_MAX)`` for
    ``x = (max - logit) * 64``: the same values as ``_grid_x``/``_grid_k``
    (scaling by a power of two is exact; ``x >= 0``), in fewer passes."""
    lg = logits.to(torch.float64)
    x = torch.sub(lg.max(dim=-1, keepdim=True).values, lg).mul_(STEP_DENOM)
    fl = torch.floor(x)
    f = x.sub_(fl)                # in place: exact
    return f, fl.clamp_(max=K_MAX).to(torch.int64)


def _ka(f: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """Grid A's index from grid B's: ``min(floor(x + 1/2), K_MAX)``."""
    return (kb + (f >= 0.5)).clamp_(max=K_MAX)


def both_grids_reference(logits: torch.Tensor):
    """``both_grids`` written plainly (the definition; slower)."""
    x, fl, f = _grid_x(logits)
    live = x < K_MAX + 1          # above that, every grid gives w = 0
    near_a = ((f - 0.5).abs_() < GUARD) & live
    near_b = ((f < GUARD) & (x >= 1) | (f > 1 - GUARD)) & live
    return (EXP_TABLE[_grid_k(fl, f, 0)], near_a.any(-1)), (EXP_TABLE[_grid_k(fl, f, 1)], near_b.any(-1))


def both_grids(logits: torch.Tensor):
    """[n, V] float logits -> for grids A and B: weights [n, V] and a bool [n]
    that says some logit lies within GUARD of a boundary of that grid which
    changes ``w`` (grid A's boundaries are at half-integers of ``x``, B's at integers).

    Computed with fewer passes than ``both_grids_reference`` and identical to
    it: the boundary tests first run on the fractional part alone, a superset
    of the exact test (every row's maximum sits at ``x = 0``, on a grid-B
    boundary that does not count: a row is flagged on B only if more than that
    one logit is near), and the rare rows flagged are redone exactly."""
    f, kb = _frac_and_kb(logits)
    ka = _ka(f, kb)
    near_a = ((f - 0.5).abs_() < GUARD).any(-1)
    near_b = ((f < GUARD) | (f > 1 - GUARD)).sum(-1) > 1
    del f
    rows = (near_a | near_b).nonzero().view(-1)
    if len(rows):
        (_, ra), (_, rb) = both_grids_reference(logits[rows])
        near_a[rows], near_b[rows] = ra, rb
    return (EXP_TABLE[ka], near_a), (EXP_TABLE[kb], near_b)


def cum_tables(logits: torch.Tensor, grid: int) -> torch.Tensor:
    """[n, V] logits -> the decoder's cumulative tables [n, V + 1] on one grid
    (``cum[:, 0] = 0``, ``cum[:, -1]`` = the total): the compiled kernel where
    available (``native.cum_tables``, identical), else torch."""
    if logits.dtype == torch.float64 and logits.device.type == "cpu" and native.available():
        return native.cum_tables(logits, grid, STEP_DENOM, EXP_TABLE, K_MAX)
    return torch.nn.functional.pad(torch.cumsum(1 + grid_weights(logits, grid), -1), (1, 0))


def quantized_freqs(logits: torch.Tensor, grid: int = 0) -> torch.Tensor:
    """[..., V] logits -> integer frequencies (``1 + w``) on one grid."""
    shape = logits.shape
    return (1 + grid_weights(logits.reshape(-1, shape[-1]), grid)).reshape(shape)


@dataclass
class CodedCaption:
    mode: str            # "lm" | "fallback"
    payload: bytes       # the whole caption section
    reason: str | None = None   # why the fallback was used
    grid: int = 0        # LM mode: 0 = grid A, 1 = grid B


class CaptionError(ValueError):
    pass


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _deflate(text: str) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return c.compress(text.encode("utf-8", "surrogatepass")) + c.flush()


class _Stepper:
    """The model on the decoder's schedule: the prefix once, then one token per
    live row per step; a row leaves the batch after its end token. Encoder and
    decoder both run exactly this."""

    def __init__(self, lm, prefix: list[int], n: int) -> None:
        self.lm = lm
        self.state = lm.start(prefix, n)
        self.rows = list(range(n))          # item index of each batch row
        self.logits = self.state["first"]   # [len(rows), V] float64

    def advance(self, feed: dict[int, int]) -> None:
        """Keep the rows whose item is in ``feed`` and step them with its token."""
        keep = [r for r, i in enumerate(self.rows) if i in feed]
        if not keep:
            self.rows = []
            return
        if len(keep) < len(self.rows):
            self.lm.keep_rows(self.state, keep)
            self.rows = [self.rows[r] for r in keep]
        self.logits = self.lm.step(self.state, [feed[i] for i in self.rows])


class CaptionCoder:
    """Text <-> bytes with a language model's next-token probabilities."""

    HEAD_CHUNK = 128  # (caption, position) rows per output-layer call when encoding by prefill
    SELF_TEST_STEPS = 6  # KV-cache steps compared with the prefill at load

    def __init__(self, model: str = lm_mod.DEFAULT_MODEL, profile: str = "portable", lm=None,
                 batch_size: int = 64, verify: str = "stream", encode_path: str = "auto",
                 device: str = "cpu") -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown caption profile {profile!r}; known: {sorted(PROFILES)}")
        if verify not in ("stream", "full", "none"):
            raise ValueError("verify must be 'stream', 'full' or 'none'")
        self.profile_name = profile
        self.profile = PROFILES[profile]
        self.lm = lm or lm_mod.load(model, dtype=self.profile["precision"], device=device)
        self.prefix = self.lm.encode_prefix(self.profile["prefix"])
        self.max_tokens = int(self.profile["max_tokens"])
        self.check_bits = int(self.profile["check_bits"])
        self.batch_size = batch_size
        self.verify = verify
        if encode_path not in ("auto", "prefill", "steps"):
            raise ValueError("encode_path must be 'auto', 'prefill' or 'steps'")
        self._noise = None  # Future of the prefill-vs-steps comparison (``_step_noise``); None: encode by steps
        if profile == "portable":
            test = self._self_test()  # raises here if the model is not float64-clean
            if test is not None and encode_path != "steps":
                # the comparison runs beside the first batch (torch releases the GIL)
                pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="semarc-caption-self-test")
                self._noise = pool.submit(self._step_noise, *test)
                pool.shutdown(wait=False)
        if encode_path == "prefill" and self.prefill_noise is None:
            raise RuntimeError(f"model {self.lm.source.name!r}: encoding by prefill is not exact enough "
                               f"for the portable profile (see CaptionCoder._self_test)")

    @property
    def prefill_noise(self) -> float | None:
        """The load-time comparison's largest difference (nat) between the
        prefill and the steps (waits for it), or None: encode by steps."""
        return self._noise.result() if self._noise is not None else None

    @property
    def encode_path(self) -> str:
        """"prefill" or "steps": how this coder encodes (waits for the load-time comparison)."""
        return "steps" if self.prefill_noise is None else "prefill"

    def _self_test(self):
        """The portable profile needs a float64-clean forward pass: padding and
        batch shape must not move logits beyond float64 noise. Checked at load
        (raises if not).

        Returns what ``_step_noise`` compares the decoder's steps with: the
        test caption's tokens and its logits through the encoder's prefill path
        (``head(hidden)``), or None where encoding by prefill must not be used
        (``head(hidden)`` is not the model's logits: a soft cap or bias outside
        the output layer)."""
        a = self.lm.tokenize("A self-test caption: two dogs play on green grass near a lake.")
        b = self.lm.tokenize("Short.")
        alone = self.lm.score(self.prefix, [a])[0]
        via_head = None
        if hasattr(self.lm, "hidden") and hasattr(self.lm, "head"):
            # the padded batch through the encoder's prefill path: within 1e-12 of the batch-1 logits it
            # passes both checks at once (one pass instead of two at every load)
            p = len(self.prefix)
            via_head = self.lm.head(self.lm.hidden(self.prefix, [b, a, b])[1, p - 1:p + len(a)])
            if not float((via_head - alone).abs().max()) < 1e-12:
                via_head = None
        if via_head is None:
            padded = self.lm.score(self.prefix, [b, a, b])[1]
            diff = float((alone - padded).abs().max())
            if not diff < 1e-9:
                raise RuntimeError(f"model {self.lm.source.name!r} is not float64-clean (padding moves logits "
                                   f"by {diff:.2e}); the portable profile cannot guarantee exact decoding with it")
            return None
        return a, via_head

    def _step_noise(self, a: list[int], via_head: torch.Tensor) -> float | None:
        """The largest difference (nat) between ``via_head`` (the prefill
        path's logits of tokens ``a``) and the decoder's KV-cache steps, or
        None if it is not 10x below the guard band (encode by steps then)."""
        # the first positions only (each step costs a pass over all weights; this runs at every load)
        st = _Stepper(self.lm, self.prefix, 1)
        steps = [st.logits[0]]
        for t in a[:self.SELF_TEST_STEPS]:
            st.advance({0: t})
            steps.append(st.logits[0])
        noise = float((torch.stack(steps) - via_head[:len(steps)]).abs().max())
        return noise if noise < GUARD / STEP_DENOM / 10 else None

    # -- identity -------------------------------------------------------------
    def describe(self) -> dict:
        desc = {"kind": "caption", "coder": "lm-arith", "profile": self.profile_name, "rule": RULE,
                "prefix": self.profile["prefix"], "max_tokens": self.max_tokens, "eos_id": self.lm.eos_id,
                "check_bits": self.check_bits, "fallback": "deflate-raw-9,uniform-bytes",
                **self.lm.fingerprint_fields()}
        desc["fingerprint"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return desc

    # -- encode ---------------------------------------------------------------
    def _fallback(self, text: str, reason: str) -> CodedCaption:
        enc = arith.Encoder()
        enc.encode(MODE_CUM[MODE_FALLBACK], MODE_CUM[MODE_FALLBACK + 1], MODE_TOTAL)
        for b in _deflate(text):
            enc.encode(b, b + 1, 256)
        return CodedCaption("fallback", enc.finish(_crc(text), self.check_bits), reason)

    def encode_batch(self, texts: list[str], verify: str | None = None) -> list[CodedCaption]:
        verify = verify or self.verify
        out: list[CodedCaption | None] = [None] * len(texts)
        todo: list[tuple[int, list[int]]] = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"caption {i} is {type(t).__name__}, not str")
            reason = None
            try:
                ids = self.lm.tokenize(t)
            except Exception as e:  # tokenizers reject e.g. lone surrogates
                ids, reason = [], f"tokenizer failed: {e}"
            if reason is None:
                if len(ids) > self.max_tokens:
                    reason = f"{len(ids)} tokens > profile limit {self.max_tokens}"
                elif self.lm.eos_id in ids:
                    reason = "text contains the end token"
                elif self.lm.detokenize(ids) != t:
                    reason = "tokenizer does not round-trip this text"
            if reason:
                out[i] = self._fallback(t, reason)
            else:
                todo.append((i, ids))
        todo.sort(key=lambda x: len(x[1]))  # similar lengths per batch: rows leave together
        for b in range(0, len(todo), self.batch_size):
            chunk = todo[b:b + self.batch_size]
            for (i, _), coded in zip(chunk, self._encode_lm([ids for _, ids in chunk],
                                                            [texts[i] for i, _ in chunk], verify)):
                out[i] = coded
        if verify == "full":
            items = [i for i, c in enumerate(out) if c.mode == "lm"]
            back = self.decode_batch([out[i].payload for i in items], errors="return")
            for i, got in zip(items, back):
                if got != texts[i]:
                    out[i] = self._fallback(texts[i], "LM stream did not decode back exactly at encode time")
        return out  # type: ignore[return-value]

    def _encode_lm(self, seqs: list[list[int]], texts: list[str], verify: str) -> list[CodedCaption]:
        n = len(seqs)
        syms = [s + [self.lm.eos_id] for s in seqs]
        spans: list[list[list[tuple[int, int, int]]]] = [[[] for _ in range(n)] for _ in range(GRIDS)]
        unsafe = [[False] * n for _ in range(GRIDS)]

        def code(items: list[int], ts: list[int], logits: torch.Tensor) -> None:
            """The symbols syms[i][t] under ``logits`` (one row per (i, t)): their
            intervals on both grids, and whether any logit is near a boundary."""
            s = torch.tensor([syms[i][t] for i, t in zip(items, ts)], dtype=torch.int64).view(-1, 1)
            for g, (w, near) in enumerate(both_grids(logits)):
                cum = torch.cumsum(w, -1)
                total = (w.shape[-1] + cum[:, -1]).tolist()
                ws = w.gather(1, s).view(-1)
                lo = (cum.gather(1, s).view(-1) - ws + s.view(-1)).tolist()
                ws, near = ws.tolist(), near.tolist()
                for r, i in enumerate(items):
                    spans[g][i].append((lo[r], lo[r] + 1 + ws[r], total[r]))
                    unsafe[g][i] |= near[r]

        # while the load-time comparison still runs, encode by prefill and check its verdict after
        speculative = self._noise is not None and not self._noise.done()
        if speculative or self.encode_path == "prefill":
            # one prefill pass over all the captions; the logits of (caption, position) pairs
            # in chunks, in caption then position order (each caption's spans in order)
            p = len(self.prefix)
            for group in self._prefill_groups([p + len(s) for s in seqs]):
                hid = self.lm.hidden(self.prefix, [seqs[i] for i in group])
                pairs = [(r, t) for r, i in enumerate(group) for t in range(len(syms[i]))]
                for c in range(0, len(pairs), self.HEAD_CHUNK):
                    rs, ts = zip(*pairs[c:c + self.HEAD_CHUNK])
                    rows = hid[torch.tensor(rs), torch.tensor(ts) + (p - 1)]
                    code([group[r] for r in rs], list(ts), self.lm.head(rows))
                del hid
        if speculative and self.encode_path != "prefill":  # the comparison failed: start again by steps
            for g in range(GRIDS):
                spans[g], unsafe[g] = [[] for _ in range(n)], [False] * n
        if self.encode_path == "steps":  # the decoder's own schedule: one KV-cache step per token
            st, t = _Stepper(self.lm, self.prefix, n), 0
            while st.rows:
                code(st.rows, [t] * len(st.rows), st.logits)
                st.advance({i: syms[i][t] for i in st.rows if syms[i][t] != self.lm.eos_id})
                t += 1
        out = []
        for i in range(n):
            g = next((g for g in range(GRIDS) if not unsafe[g][i]), None)
            if g is None:
                out.append(self._fallback(texts[i], "logits too close to a grid boundary on both grids"))
                continue
            enc = arith.Encoder()
            enc.encode(MODE_CUM[g], MODE_CUM[g + 1], MODE_TOTAL)
            for lo, hi, total in spans[g][i]:
                enc.encode(lo, hi, total)
            data = enc.finish(_crc(texts[i]), self.check_bits)
            if verify == "stream" and not self._verify_stream(data, g, spans[g][i], texts[i]):
                out.append(self._fallback(texts[i], "LM stream did not decode back exactly at encode time"))
                continue
            out.append(CodedCaption("lm", data, None, g))
        return out

    PREFILL_TOKENS = 8192        # padded tokens per prefill pass
    PREFILL_ATTENTION = 1 << 22  # rows x width^2 per prefill pass (attention scores)

    def _prefill_groups(self, widths: list[int]) -> list[list[int]]:
        """Consecutive groups of items whose padded prefill stays within the
        token and attention budgets (long captions go a few at a time)."""
        groups: list[list[int]] = []
        cur: list[int] = []
        wide = 0
        for i, w in enumerate(widths):
            wide = max(wide, w)
            if cur and ((len(cur) + 1) * wide > self.PREFILL_TOKENS or
                        (len(cur) + 1) * wide * wide > self.PREFILL_ATTENTION):
                groups.append(cur)
                cur, wide = [], w
            cur.append(i)
        if cur:
            groups.append(cur)
        return groups

    def _verify_stream(self, data: bytes, grid: int, spans, text: str) -> bool:
        """Decode ``data`` with the arithmetic decoder: the mode, every symbol
        (the decoder's target must fall in the encoded symbol's interval, so a
        table search returns that symbol), the end and the check."""
        dec = arith.Decoder(data)
        try:
            if arith.decode_symbol(dec, MODE_CUM) != grid:
                return False
            for lo, hi, total in spans:
                dec.consume(lo, hi, total)
        except ValueError:
            return False
        return dec.verify_end(_crc(text), self.check_bits)

    # -- decode ---------------------------------------------------------------
    def _decode_fallback(self, dec: arith.Decoder, limit: int) -> str:
        d = zlib.decompressobj(-15)
        raw = bytearray()
        nbytes = 0
        while not d.eof:
            if dec.scale > limit:
                raise CaptionError("corrupt fallback caption stream: no end within its length")
            b = arith.decode_symbol(dec, UNIFORM_BYTE)
            nbytes += 1
            try:
                raw += d.decompress(bytes([b]))
            except zlib.error as e:
                raise CaptionError(f"corrupt fallback caption stream: {e}") from e
        try:
            text = bytes(raw).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise CaptionError(f"corrupt fallback caption stream: {e}") from e
        if d.unused_data or not dec.verify_end(_crc(text), self.check_bits):
            raise CaptionError("corrupt fallback caption stream: check failed")
        return text

    def _decode_lm(self, decs: list[arith.Decoder], grids: list[int], limits: list[int]) -> list:
        """Batched incremental decode on the encoder's schedule. Returns text or
        a CaptionError per stream."""
        n = len(decs)
        toks: list[list[int]] = [[] for _ in range(n)]
        res: list = [None] * n
        st = _Stepper(self.lm, self.prefix, n)
        while st.rows:
            feed = {}
            by_grid: dict[int, list[int]] = {}
            for r, i in enumerate(st.rows):
                by_grid.setdefault(grids[i], []).append(r)
            for g, rs in by_grid.items():
                cum = cum_tables(st.logits if len(rs) == len(st.rows) else st.logits[rs], g)
                for j, r in enumerate(rs):
                    i = st.rows[r]
                    s = self._next_token(i, lambda d: arith.decode_symbol(d, cum[j]), decs, toks, limits, res)
                    if s is not None:
                        feed[i] = s
            st.advance(feed)
        return res

    def _next_token(self, i: int, decode, decs, toks, limits, res) -> int | None:
        """Decode item ``i``'s next symbol with ``decode(decoder)``: a token to
        feed back, or None when the item ended (``res[i]``: its text, or a
        CaptionError for a lost sync, a failed end/check or no end in time)."""
        try:
            s = decode(decs[i])
        except ValueError:
            res[i] = CaptionError("corrupt LM-coded caption stream: decoder lost sync")
            return None
        if s == self.lm.eos_id:
            text = self.lm.detokenize(toks[i])
            res[i] = text if decs[i].verify_end(_crc(text), self.check_bits) else CaptionError(
                "corrupt or truncated LM-coded caption stream: end or check does not match")
            return None
        if decs[i].scale > limits[i] or len(toks[i]) >= self.max_tokens:
            res[i] = CaptionError("corrupt LM-coded caption stream: no end token within its length")
            return None
        toks[i].append(s)
        return s

    def decode_batch(self, payloads: list[bytes], errors: str = "raise") -> list:
        """Caption sections -> texts. A corrupt item raises CaptionError naming
        it, or with ``errors="return"`` yields a CaptionError in its place while
        the other items still decode."""
        out: list = [None] * len(payloads)
        lm_items: list[tuple[int, arith.Decoder, int, int]] = []
        for i, p in enumerate(payloads):
            if not isinstance(p, (bytes, bytearray)):
                out[i] = CaptionError(f"caption {i}: not bytes")
                continue
            dec = arith.Decoder(p)
            # A stream of B bytes never carries more than ~8B bits of information:
            # past 8B + SLACK bits without an end, it is corrupt.
            limit = 8 * len(p) + INFO_SLACK_BITS + arith.PRECISION
            mode = arith.decode_symbol(dec, MODE_CUM)
            if mode == MODE_FALLBACK:
                try:
                    out[i] = self._decode_fallback(dec, limit)
                except CaptionError as e:
                    out[i] = CaptionError(f"caption {i}: {e}")
            else:
                lm_items.append((i, dec, mode, limit))
        for b in range(0, len(lm_items), self.batch_size):
            chunk = lm_items[b:b + self.batch_size]
            res = self._decode_lm([d for _, d, _, _ in chunk], [g for _, _, g, _ in chunk], [x for *_, x in chunk])
            for (i, *_), r in zip(chunk, res):
                out[i] = CaptionError(f"caption {i}: {r}") if isinstance(r, CaptionError) else r
        if errors == "raise":
            for x in out:
                if isinstance(x, CaptionError):
                    raise x
        return out
