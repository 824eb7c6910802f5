"""Lossless caption coding: arithmetic coding driven by a language model.

``CaptionCoder.encode_batch(texts)`` -> one ``CodedCaption`` per text:
``mode`` is ``"lm"`` (arithmetic code of the tokens plus an end token under
the model's next-token distribution) or ``"fallback"`` (raw deflate of the
UTF-8 bytes), with the reason for a fallback. ``decode_batch`` inverts it.

The ``portable`` profile decodes bit-exactly on any machine, batch size,
padding or thread count:

1. logits come from a float64 forward pass (prefill at encode, KV-cache
   incremental steps at decode; they agree to ~1e-13);
2. each logit is quantised relative to the row maximum to an integer grid
   of ``1/64`` nat (``k = round((max - l) / STEP)``), a grid ~1e11 times
   coarser than float64 noise, so a rounding flip needs noise to land within
   1e-13 of a grid boundary;
3. from there on everything is integer: ``w = EXP_TABLE[k]`` (a table of
   ``floor(2**30 * exp(-k/64))`` computed with exact decimal arithmetic),
   ``freq = 1 + w * (TOTAL - V) // sum(w)``, the remainder going to the most
   probable token (lowest id on ties). ``TOTAL = 2**32``.

Every caption is decoded right after encoding (on the decoder's own code
path); one that does not come back exactly is stored by the fallback and
flagged. Texts that the tokenizer cannot round-trip, that contain the end
token's text, or that are longer than ``max_tokens`` tokens also use the
fallback (documented in docs/format.md).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import zlib
from dataclasses import dataclass

import torch

from . import arith
from . import lm as lm_mod

STEP_DENOM = 64            # logit grid: 1/64 nat
K_MAX = 40 * STEP_DENOM    # exp(-40) ~ 4e-18: everything below gets the floor frequency
W_BITS = 30
TOTAL_BITS = 32
TOTAL = 1 << TOTAL_BITS
INFO_SLACK_BITS = 32


def _exp_table() -> torch.Tensor:
    ctx = decimal.Context(prec=60)
    scale = decimal.Decimal(1 << W_BITS)
    vals = [int((ctx.exp(decimal.Decimal(-k) / STEP_DENOM) * scale).to_integral_value(rounding=decimal.ROUND_FLOOR))
            for k in range(K_MAX)]
    return torch.tensor(vals + [0], dtype=torch.int64)


EXP_TABLE = _exp_table()
RULE = f"q1:step=1/{STEP_DENOM}nat,kmax={K_MAX},w=2^{W_BITS}floor,total=2^{TOTAL_BITS},floor=1,rem=argmax"

PROFILES = {
    # prefix: the fixed text context every caption is coded after
    "portable": {"precision": torch.float64, "prefix": "<|im_start|>assistant\n", "max_tokens": 1024},
}


def quantized_freqs(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] float logits -> [..., V] int64 frequencies summing to TOTAL."""
    lg = logits.to(torch.float64)
    m = lg.max(dim=-1, keepdim=True).values
    k = torch.floor((m - lg) * STEP_DENOM + 0.5).clamp_(0, K_MAX).to(torch.int64)
    w = EXP_TABLE[k]
    v = lg.shape[-1]
    wsum = w.sum(dim=-1, keepdim=True)
    freq = 1 + (w * (TOTAL - v)) // wsum
    rem = TOTAL - freq.sum(dim=-1, keepdim=True)
    top = torch.argmin(k, dim=-1, keepdim=True)  # first (lowest id) among the most probable
    freq.scatter_add_(-1, top, rem)
    return freq


def _cum(freq_row: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(freq_row, 0)])


@dataclass
class CodedCaption:
    mode: str            # "lm" | "fallback"
    payload: bytes
    reason: str | None = None   # why the fallback was used


class CaptionError(ValueError):
    pass


def fallback_encode(text: str) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return c.compress(text.encode("utf-8", "surrogatepass")) + c.flush()


def fallback_decode(payload: bytes) -> str:
    try:
        d = zlib.decompressobj(-15)
        raw = d.decompress(payload) + d.flush()
        if not d.eof:
            raise CaptionError("fallback caption stream is truncated")
        return raw.decode("utf-8", "surrogatepass")
    except (zlib.error, UnicodeDecodeError) as e:
        raise CaptionError(f"corrupt fallback caption stream: {e}") from e


class CaptionCoder:
    """Text <-> bytes with a language model's next-token probabilities."""

    def __init__(self, model: str = lm_mod.DEFAULT_MODEL, profile: str = "portable", lm=None,
                 batch_size: int = 64) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown caption profile {profile!r}; known: {sorted(PROFILES)}")
        self.profile_name = profile
        self.profile = PROFILES[profile]
        self.lm = lm or lm_mod.load(model, dtype=self.profile["precision"])
        self.prefix = self.lm.encode_prefix(self.profile["prefix"])
        self.max_tokens = int(self.profile["max_tokens"])
        self.batch_size = batch_size
        if profile == "portable":
            self._self_test()

    def _self_test(self) -> None:
        """The portable profile needs a float64-clean forward pass: padding and
        batch shape must not move logits beyond float64 noise. Checked at load."""
        a = self.lm.tokenize("A self-test caption: two dogs play on green grass near a lake.")
        b = self.lm.tokenize("Short.")
        alone = self.lm.score(self.prefix, [a])[0]
        padded = self.lm.score(self.prefix, [b, a, b])[1]
        diff = float((alone - padded).abs().max())
        if not diff < 1e-9:
            raise RuntimeError(f"model {self.lm.source.name!r} is not float64-clean (padding moves logits by "
                               f"{diff:.2e}); the portable profile cannot guarantee exact decoding with it")

    # -- identity -------------------------------------------------------------
    def describe(self) -> dict:
        desc = {"kind": "caption", "coder": "lm-arith", "profile": self.profile_name, "rule": RULE,
                "prefix": self.profile["prefix"], "max_tokens": self.max_tokens, "eos_id": self.lm.eos_id,
                **self.lm.fingerprint_fields()}
        desc["fingerprint"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return desc

    @staticmethod
    def describe_fallback() -> dict:
        desc = {"kind": "caption", "coder": "deflate-raw", "level": 9, "encoding": "utf-8"}
        desc["fingerprint"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return desc

    # -- encode ---------------------------------------------------------------
    def encode_batch(self, texts: list[str], verify: bool = True) -> list[CodedCaption]:
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
                out[i] = CodedCaption("fallback", fallback_encode(t), reason)
            else:
                todo.append((i, ids))
        todo.sort(key=lambda x: len(x[1]))  # similar lengths per batch: less padding
        for b in range(0, len(todo), self.batch_size):
            chunk = todo[b:b + self.batch_size]
            seqs = [ids for _, ids in chunk]
            logits = self.lm.score(self.prefix, seqs)
            payloads = [self._encode_tokens(ids, lg) for ids, lg in zip(seqs, logits)]
            if verify:
                back = self._decode_tokens(payloads)
                for (i, ids), p, got in zip(chunk, payloads, back):
                    if got == ids:
                        out[i] = CodedCaption("lm", p)
                    else:
                        out[i] = CodedCaption("fallback", fallback_encode(texts[i]),
                                              "LM stream did not decode back exactly at encode time")
            else:
                for (i, _), p in zip(chunk, payloads):
                    out[i] = CodedCaption("lm", p)
        return out  # type: ignore[return-value]

    def _encode_tokens(self, ids: list[int], logits: torch.Tensor) -> bytes:
        enc = arith.Encoder()
        freq = quantized_freqs(logits)
        syms = ids + [self.lm.eos_id]
        cum = torch.cumsum(freq, dim=-1)
        for t, s in enumerate(syms):
            hi = int(cum[t, s])
            enc.encode(hi - int(freq[t, s]), hi, TOTAL)
        return enc.finish()

    # -- decode ---------------------------------------------------------------
    def _decode_tokens(self, payloads: list[bytes]) -> list[list[int] | None]:
        """Batched incremental decode with the KV cache. ``None`` marks a stream
        that is corrupt (no end token within its bit budget, lost sync, or not
        the canonical encoding of what it decoded to)."""
        n = len(payloads)
        if n == 0:
            return []
        decs = [arith.Decoder(p) for p in payloads]
        # A canonical stream of B bytes never carries more than ~8B bits of
        # information: once a stream has consumed 8B + SLACK bits without an
        # end token, it is corrupt (a legitimate one trips this with probability
        # ~2^-SLACK, and encode-time verification would then use the fallback).
        limits = [8 * len(p) + INFO_SLACK_BITS + arith.PRECISION for p in payloads]
        state = self.lm.start(self.prefix, n)
        logits = state["first"]
        toks: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        bad = [False] * n
        while True:
            freq = quantized_freqs(logits)
            feed = []
            for i in range(n):
                if done[i]:
                    feed.append(self.lm.eos_id)
                    continue
                try:
                    s = arith.decode_symbol(decs[i], _cum(freq[i]))
                except ValueError:
                    bad[i] = done[i] = True
                    feed.append(self.lm.eos_id)
                    continue
                if s == self.lm.eos_id:
                    done[i] = True
                    bad[i] = not decs[i].is_canonical()
                else:
                    toks[i].append(s)
                    if decs[i].scale > limits[i] or len(toks[i]) > self.max_tokens:
                        bad[i] = done[i] = True
                feed.append(s)
            if all(done):
                break
            logits = self.lm.step(state, feed)
        return [None if bad[i] else toks[i] for i in range(n)]

    def decode_batch(self, items: list[tuple[str, bytes]], errors: str = "raise") -> list:
        """``(mode, payload)`` pairs -> texts. A corrupt item raises CaptionError
        naming it, or with ``errors="return"`` yields a CaptionError in its place
        while the other items still decode."""
        out: list = [None] * len(items)
        lm_items = []
        for i, (mode, payload) in enumerate(items):
            if mode == "fallback":
                try:
                    out[i] = fallback_decode(payload)
                except CaptionError as e:
                    out[i] = e
            elif mode == "lm":
                lm_items.append(i)
            else:
                out[i] = CaptionError(f"unknown caption mode {mode!r}")
        for b in range(0, len(lm_items), self.batch_size):
            idx = lm_items[b:b + self.batch_size]
            res = self._decode_tokens([items[i][1] for i in idx])
            for i, r in zip(idx, res):
                out[i] = (CaptionError(f"caption {i}: corrupt or truncated LM-coded caption stream")
                          if r is None else self.lm.detokenize(r))
        if errors == "raise":
            for x in out:
                if isinstance(x, CaptionError):
                    raise x
        return out
