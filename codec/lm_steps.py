"""KV-cache decoding steps for Llama-family models, written out for the decoder.

The portable caption profile decodes one token per caption per step in
float64 (``caption._Stepper``). At the decoder's batch shapes (a few dozen
rows) a step is bound by the float64 products and by streaming the weights,
and transformers' generic step adds to both: each product runs as
``x @ W.T`` (MKL runs the layers' shapes at 24 rows at 40-47 GFLOP/s that way
on this project's CPU, against 61-74 as ``W @ x``), q/k/v and gate/up are
separate products, the cache is concatenated at every step, and each layer
is some sixty small torch operations.

``LlamaSteps`` computes the same function:

* activations are kept feature-major (``[hidden, rows]``), so every product
  is ``W @ X``; q/k/v and gate/up are fused (the model's own parameters become
  views of the fused weights: no memory is added and the prefill path reads
  the same numbers);
* on a CPU where ``codec/native.py`` compiled (``impl == "native"``), the
  products read float32 copies of the weights (the float64 model's weights
  are float32 numbers, checked at load): half the bytes per step; attention,
  RMSNorm and SiLU are compiled too, a handful of calls per layer instead of
  dozens of torch operations. Rows are padded to the kernel's lanes, and rows
  that leave the batch ride along until dropping them narrows the products
  (a compaction copies the whole cache);
* elsewhere (a GPU, no compiler, ``SEMARC_NATIVE=0``; ``impl == "torch"``):
  the same steps in torch, RoPE from the model's float64 table
  (``lm._TableRoPE``) as ``q * cos + rotate_half(q) * sin``.

Kodak decode (24 captions, one thread, this project's CPU): about 12 s with
the compiled kernels against 18-19 s with transformers' step.

Neither form is bit-identical to transformers' step (sums run in another
order), which is within the portable profile's tolerance by design: float64
logits agree to ~1e-13 nat, 100x inside the guard band, and the caption coder
measures that at every load against its prefill path
(``CaptionCoder._step_noise``); tests decode bytes written by each
implementation with the others. ``supports(model)`` names what is not
handled; those models keep transformers' step.
"""

from __future__ import annotations

import threading

import torch

from . import native

_LAYER = "LlamaDecoderLayer"


def supports(model) -> str | None:
    """None if ``LlamaSteps`` computes this model's steps, else why not."""
    cfg = model.config
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not LlamaForCausalLM"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)!r}"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biases"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    rot = getattr(model.model, "rotary_emb", None)
    if type(rot).__name__ != "_TableRoPE":
        return "no float64 RoPE table (not a float64-clean model)"
    if model.lm_head.bias is not None:
        return "output-layer bias"
    if any(type(layer).__name__ != _LAYER for layer in model.model.layers):
        return "a layer that is not LlamaDecoderLayer"
    return None


def _fuse(mods: list[torch.nn.Linear]) -> torch.Tensor:
    """One weight for several linear layers (rows stacked); each layer's own
    weight becomes a view of it."""
    w = torch.cat([m.weight.detach() for m in mods]).contiguous()
    at = 0
    for m in mods:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(w[at:at + n], requires_grad=False)
        at += n
    return w


def _exact_float32(w: torch.Tensor) -> torch.Tensor | None:
    """``w`` as float32 if that holds its values exactly, else None."""
    w32 = w.to(torch.float32)
    return w32 if torch.equal(w32.to(w.dtype), w) else None


class LlamaSteps:
    """The decoder's steps for one Llama model (see the module docstring)."""

    def __init__(self, model, use_native: bool = True) -> None:
        why = supports(model)
        if why is not None:
            raise ValueError(f"LlamaSteps does not support this model: {why}")
        cfg = model.config
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.norms, self._w = [], []  # per layer: (input, post-attention) RMSNorms; (qkv, o, gate-up, down)
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.norms.append((layer.input_layernorm, layer.post_attention_layernorm))
            self._w.append((_fuse([a.q_proj, a.k_proj, a.v_proj]), a.o_proj.weight, _fuse([m.gate_proj, m.up_proj]),
                            m.down_proj.weight))
        self.norm = model.model.norm
        self.embed = model.model.embed_tokens.weight
        self.head = model.lm_head.weight
        self.rope = model.model.rotary_emb
        self.scale = self.hd ** -0.5
        self._w.append(self.head)
        self._use_native = use_native
        self._impl: str | None = None  # decided at the first use (``impl``)
        self._lock = threading.Lock()

    @property
    def impl(self) -> str:
        """"native" or "torch": how the products run. Decided at the first use
        (an encoder's first steps run in the load-time comparison's thread, so
        the float32 copies, ~0.6 s for SmolLM2, are made off the start-up path)."""
        with self._lock:
            if self._impl is None:
                # products: torch's over the float64 weights, or native.matmul over float32 copies of them
                # where they are float32 numbers (on a CPU): half the bytes per step, batch-invariant
                self._impl = "torch"
                if (self._use_native and self.embed.device.type == "cpu" and self.embed.dtype == torch.float64
                        and native.available()):
                    w32 = [tuple(_exact_float32(t) for t in ws) for ws in self._w[:-1]] + [_exact_float32(self.head)]
                    if all(t is not None for ws in w32[:-1] for t in ws) and w32[-1] is not None:
                        self._impl, self._w = "native", w32
            return self._impl

    @staticmethod
    def _rms(norm, h: torch.Tensor) -> torch.Tensor:
        """RMSNorm over the features of feature-major ``h`` (the same formula
        as ``lm._rms_forward``)."""
        var = h.pow(2).mean(0, keepdim=True)
        return norm.weight[:, None] * (h * torch.rsqrt(var + norm.variance_epsilon))

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x * cos + rotate_half(x) * sin`` for ``x`` [heads, hd, rows]."""
        half = self.hd // 2
        out = x * cos
        out[:, :half] -= x[:, half:] * sin[:, :half]
        out[:, half:] += x[:, :half] * sin[:, half:]
        return out

    @torch.inference_mode()
    def start(self, prefix: list[int], n: int) -> dict:
        """Run ``prefix`` (one row), then give each of ``n`` rows its cache."""
        state = {"pos": 0, "cache": None, "live": None}  # pos: the next position, also its cache index
        logits = None
        for t in prefix:
            logits = self.step(state, torch.tensor([t], device=self.embed.device))
        cols = self._cols(n)  # the native kernel computes whole lanes: the cache holds that many rows
        state["cache"] = [(k[:1].expand(cols, -1, -1, -1).contiguous(), v[:1].expand(cols, -1, -1, -1).contiguous())
                          for k, v in state["cache"]]
        state["live"] = list(range(n)) if cols > n else None
        return {"steps": state, "pos": len(prefix), "first": logits.expand(n, -1).contiguous()}

    def _cols(self, m: int) -> int:
        """Rows a product over ``m`` rows costs (the native kernel computes whole lanes)."""
        if self.impl != "native":
            return m
        lane = native.lanes()
        return -(-m // lane) * lane

    @torch.inference_mode()
    def keep(self, state: dict, rows: list[int]) -> None:
        """Keep the caller's ``rows`` (in that order). Rows that left stay in the
        cache, computed on a dummy token, until dropping them makes the products
        narrower (with the native kernel, by a whole lane): a compaction copies
        the whole cache."""
        ncache = state["cache"][0][0].shape[0]
        live = state["live"] if state["live"] is not None else list(range(ncache))
        live = [live[r] for r in rows]
        if self._cols(len(live)) < ncache:
            kept = set(live)
            keep = live + [r for r in range(ncache) if r not in kept][:self._cols(len(live)) - len(live)]
            idx = torch.tensor(keep, dtype=torch.long, device=self.embed.device)
            state["cache"] = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in state["cache"]]
            live, ncache = list(range(len(live))), len(keep)
        state["live"] = None if live == list(range(ncache)) else live

    @torch.inference_mode()
    def step(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row -> [rows, V] logits."""
        live, n = state["live"], len(tokens)
        cols = state["cache"][0][0].shape[0] if state["cache"] is not None else self._cols(n)
        if cols != n:  # rows outside the caller's batch ride along on token 0
            idx = torch.tensor(live if live is not None else [0], dtype=torch.long, device=tokens.device)
            full = torch.zeros(cols, dtype=torch.long, device=tokens.device)
            full[idx] = tokens
            tokens = full
        pos, cache = state["pos"], state["cache"]
        if cache is None:
            cache = state["cache"] = [(self._alloc(cols, 16), self._alloc(cols, 16)) for _ in self.norms]
        elif pos == cache[0][0].shape[2]:  # full: double the capacity
            cache = state["cache"] = [(self._grow(k), self._grow(v)) for k, v in cache]
        h = self.embed[tokens].T.contiguous()  # [H, cols]
        forward = self._forward_native if self.impl == "native" else self._forward_torch
        logits = forward(h, cache, pos).T
        state["pos"] = pos + 1
        return logits if cols == n else logits[idx]

    def _forward_torch(self, h: torch.Tensor, cache, t: int) -> torch.Tensor:
        """The layers and the output layer for feature-major ``h`` at position
        ``t`` -> logits [V, columns]."""
        nh, nkv, hd, n = self.nh, self.nkv, self.hd, h.shape[1]
        cos = self.rope.cos_table[t].view(1, hd, 1)
        sin = self.rope.sin_table[t].view(1, hd, 1)
        for (n1, n2), (qkv_w, o_w, gu_w, down_w), (kc, vc) in zip(self.norms, self._w, cache):
            qkv = qkv_w @ self._rms(n1, h)
            q = self._rotate(qkv[:nh * hd].view(nh, hd, n), cos, sin)
            k = self._rotate(qkv[nh * hd:(nh + nkv) * hd].view(nkv, hd, n), cos, sin)
            v = qkv[(nh + nkv) * hd:].view(nkv, hd, n)
            kc[:, :, t] = k.permute(2, 0, 1)
            vc[:, :, t] = v.permute(2, 0, 1)
            qr = q.permute(2, 0, 1).reshape(n, nkv, nh // nkv, hd)
            scores = (qr @ kc[:, :, :t + 1].transpose(-1, -2)) * self.scale
            att = torch.softmax(scores, -1) @ vc[:, :, :t + 1]  # [n, nkv, group, hd]
            h = h + o_w @ att.reshape(n, nh * hd).T
            g, u = (gu_w @ self._rms(n2, h)).chunk(2)
            h = h + down_w @ (torch.nn.functional.silu(g) * u)
        return self._w[-1] @ self._rms(self.norm, h)

    def _forward_native(self, h: torch.Tensor, cache, t: int) -> torch.Tensor:
        """``_forward_torch`` on the compiled kernels."""
        cos, sin = self.rope.cos_table[t].contiguous(), self.rope.sin_table[t].contiguous()
        mm = native.matmul
        for (n1, n2), (qkv_w, o_w, gu_w, down_w), (kc, vc) in zip(self.norms, self._w, cache):
            qkv = mm(qkv_w, native.rms_norm(h, n1.weight, n1.variance_epsilon))
            h += mm(o_w, native.attention(qkv, cos, sin, kc, vc, t, self.nh, self.scale))
            h += mm(down_w, native.silu_mul(mm(gu_w, native.rms_norm(h, n2.weight, n2.variance_epsilon))))
        return mm(self._w[-1], native.rms_norm(h, self.norm.weight, self.norm.variance_epsilon))

    def _alloc(self, n: int, cap: int) -> torch.Tensor:
        return torch.empty(n, self.nkv, cap, self.hd, dtype=self.embed.dtype, device=self.embed.device)

    def _grow(self, c: torch.Tensor) -> torch.Tensor:
        new = self._alloc(c.shape[0], 2 * c.shape[2])
        new[:, :, :c.shape[2]] = c
        return new
