"""The ``vllm`` caption profile: fast top-k coding whose decode conditions are
recorded and checked.

The portable profile (``codec/caption.py``) needs the full float64
distribution on every step. A serving engine such as vLLM returns, per step,
only the top-``k`` log-probabilities, computed in float16/bfloat16 on a GPU:
fast, and repeatable only under the same conditions (vLLM version, GPU class,
dtype, batch-invariant kernels, settings). This profile codes with exactly
that:

* per step, the provider's top-``k`` next tokens (rank order) and an escape;
  token ``j`` of the top-k has weight ``EXP_TABLE[min(floor(-logprob*64 + 1/2),
  K_MAX)]`` (the portable profile's exact table; ``-logprob * 64`` is exact in
  IEEE arithmetic), frequency ``1 + w``; the escape has
  ``max(1, 2^30 - sum(w))``; a token outside the top-k is coded as the escape,
  then uniformly among the other ``V - k`` ids;
* the stream is the same as the portable profile's (mode symbol, symbols,
  termination carrying ``check_bits`` of crc32): corruption fails loudly;
* encoder and decoder issue the *same requests* (one per prefix of the
  caption: context = prompt prefix + the tokens so far, one generated token,
  top-k logprobs) with prefix caching off, so under the same conditions the
  engine computes the same numbers. The conditions are part of the profile's
  fingerprint; a decoder refuses a stream coded under others, naming what
  differs.

Providers: ``codec.lm_vllm.VllmTopK`` (the vLLM engine, GPU) and
``TransformersTopK`` (any transformers causal LM, each context scored alone;
conditions: torch version, device, dtype, threads).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform

import torch

from . import arith
from .caption import (EXP_TABLE, K_MAX, MODE_CUM, MODE_TOTAL, STEP_DENOM, CaptionCoder, CaptionError, CodedCaption,
                      _crc)

ESC_SCALE = 1 << 30
RULE_TOPK = f"topk1:w=EXP_TABLE[min(floor(-lp*{STEP_DENOM}+1/2),{K_MAX})],freq=1+w,esc=max(1,2^30-sum w),other=uniform"


def topk_table(entries: list[tuple[int, float]]) -> tuple[list[int], list[int]]:
    """[(token id, logprob)] in rank order -> (ids, cumulative table with the
    escape as the last symbol)."""
    ids, cum = [], [0]
    wsum = 0
    for tok, lp in entries:
        k = min(math.floor(-float(lp) * STEP_DENOM + 0.5), K_MAX)  # exact IEEE operations
        w = int(EXP_TABLE[max(k, 0)])
        wsum += w
        ids.append(int(tok))
        cum.append(cum[-1] + 1 + w)
    cum.append(cum[-1] + max(1, ESC_SCALE - wsum))
    return ids, cum


class TransformersTopK:
    """Top-k next-token logprobs from a transformers causal LM, each context
    scored alone (batch 1), so results do not depend on batching."""

    backend = "transformers-topk"

    def __init__(self, lm) -> None:
        self.lm = lm
        self.eos_id = lm.eos_id
        self.vocab_size = lm.vocab_size

    def tokenize(self, text: str) -> list[int]:
        return self.lm.tokenize(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.lm.detokenize(ids)

    def encode_prefix(self, text: str) -> list[int]:
        return self.lm.encode_prefix(text)

    @torch.inference_mode()
    def next_topk(self, contexts: list[list[int]], k: int) -> list[list[tuple[int, float]]]:
        out = []
        for ctx in contexts:
            ids = torch.tensor([ctx], dtype=torch.long, device=self.lm.device)
            lg = self.lm.model(input_ids=ids, use_cache=False).logits[0, -1].to("cpu", torch.float64)
            lp = torch.log_softmax(lg, -1)
            vals, idx = torch.topk(lp, k)  # sorted, descending
            order = sorted(zip(idx.tolist(), vals.tolist()), key=lambda x: (-x[1], x[0]))
            out.append(order)
        return out

    def fingerprint_fields(self) -> dict:
        return {**self.lm.fingerprint_fields(), "backend": self.backend}

    def conditions(self) -> dict:
        return {"torch": torch.__version__, "device": str(self.lm.device), "dtype": str(self.lm.dtype),
                "threads": torch.get_num_threads(), "machine": platform.machine()}


class TopKCaptionCoder(CaptionCoder):
    """Caption coder for a top-k provider (profile ``vllm`` or a local one)."""

    def __init__(self, provider, profile: str = "vllm", k: int = 20, prefix: str = "<|im_start|>assistant\n",
                 max_tokens: int = 1024, check_bits: int = 2, batch_size: int = 64) -> None:
        self.lm = provider
        self.profile_name = profile
        self.profile = {"prefix": prefix, "max_tokens": max_tokens, "check_bits": check_bits}
        self.prefix = provider.encode_prefix(prefix)
        self.max_tokens, self.check_bits, self.k = max_tokens, check_bits, k
        self.batch_size = batch_size
        self.verify = "stream"

    def describe(self) -> dict:
        desc = {"kind": "caption", "coder": "lm-arith-topk", "profile": self.profile_name, "rule": RULE_TOPK,
                "k": self.k, "prefix": self.profile["prefix"], "max_tokens": self.max_tokens,
                "eos_id": self.lm.eos_id, "check_bits": self.check_bits, "fallback": "deflate-raw-9,uniform-bytes",
                **self.lm.fingerprint_fields(), "conditions": self.lm.conditions()}
        desc["fingerprint"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return desc

    def _code_symbol(self, enc_or_dec, table, tok: int | None):
        """Encode ``tok`` (encoder) or decode a token (decoder, ``tok=None``)."""
        ids, cum = table
        if tok is not None:
            if tok in ids:
                j = ids.index(tok)
                enc_or_dec.encode(cum[j], cum[j + 1], cum[-1])
            else:
                j = len(ids)
                enc_or_dec.encode(cum[j], cum[j + 1], cum[-1])
                rest = tok - sum(1 for t in ids if t < tok)
                enc_or_dec.encode(rest, rest + 1, self.lm.vocab_size - len(ids))
            return tok
        j = arith.decode_symbol(enc_or_dec, cum)
        if j < len(ids):
            return ids[j]
        rest = arith.decode_symbol(enc_or_dec, range(self.lm.vocab_size - len(ids) + 1))
        tok = rest
        for t in sorted(ids):  # the rest-th id not in the top-k
            if t <= tok:
                tok += 1
        return tok

    def _encode_lm(self, seqs: list[list[int]], texts: list[str], verify: str) -> list[CodedCaption]:
        eos = self.lm.eos_id
        contexts, owners = [], []
        for i, s in enumerate(seqs):
            for t in range(len(s) + 1):
                contexts.append(self.prefix + s[:t])
                owners.append(i)
        tables = [topk_table(e) for e in self.lm.next_topk(contexts, self.k)]
        per: list[list] = [[] for _ in seqs]
        for i, tb in zip(owners, tables):
            per[i].append(tb)
        out = []
        for i, s in enumerate(seqs):
            enc = arith.Encoder()
            enc.encode(MODE_CUM[0], MODE_CUM[1], MODE_TOTAL)
            for tok, tb in zip(s + [eos], per[i]):
                self._code_symbol(enc, tb, tok)
            data = enc.finish(_crc(texts[i]), self.check_bits)
            if verify != "none":
                dec = arith.Decoder(data)
                ok = arith.decode_symbol(dec, MODE_CUM) == 0
                try:
                    ok = ok and [self._code_symbol(dec, tb, None) for tb in per[i]] == s + [eos]
                except ValueError:
                    ok = False
                if not (ok and dec.verify_end(_crc(texts[i]), self.check_bits)):
                    out.append(self._fallback(texts[i], "LM stream did not decode back exactly at encode time"))
                    continue
            out.append(CodedCaption("lm", data, None, 0))
        return out

    def _decode_lm(self, decs: list[arith.Decoder], grids: list[int], limits: list[int]) -> list:
        n = len(decs)
        toks: list[list[int]] = [[] for _ in range(n)]
        res: list = [None] * n
        live = [i for i in range(n) if grids[i] == 0]
        for i in range(n):
            if grids[i] != 0:
                res[i] = CaptionError(f"mode {grids[i]} is not used by the {self.profile_name} profile")
        while live:
            tables = [topk_table(e) for e in self.lm.next_topk([self.prefix + toks[i] for i in live], self.k)]
            nxt = []
            for i, tb in zip(live, tables):
                if self._next_token(i, lambda d: self._code_symbol(d, tb, None), decs, toks, limits, res) is not None:
                    nxt.append(i)
            live = nxt
        return res


PROFILE_NAMES = ("portable", "vllm")
VLLM_DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_coder(model: str, profile: str = "portable", batch_size: int = 64, **kw):
    """The caption coder for a profile: ``portable`` (float64 transformers, any
    machine) or ``vllm`` (top-k from a vLLM engine, same conditions to decode)."""
    from . import lm as lm_mod

    if profile == "portable":
        return CaptionCoder(model=model, profile=profile, batch_size=batch_size, **kw)
    if profile == "vllm":
        from .lm_vllm import VllmTopK

        name = VLLM_DEFAULT_MODEL if model == lm_mod.DEFAULT_MODEL else model
        return TopKCaptionCoder(VllmTopK(name, **kw), profile="vllm", batch_size=batch_size)
    raise ValueError(f"unknown caption profile {profile!r}; known: {list(PROFILE_NAMES)}")
