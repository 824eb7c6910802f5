"""The caption coder as a Ray actor (plain class; ``workers.pool`` wraps it)."""

from __future__ import annotations

import os

from .meter import Metered, metered


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


class CaptionWorker(Metered):
    def __init__(self, model: str, profile: str, threads: int = 1, batch_size: int = 64,
                 device: str = "auto") -> None:
        _threads(threads)
        from semarc.codec.caption_topk import load_coder

        from .device import pick_device

        # the vllm profile's engine places itself; the portable coder runs where Ray put the actor
        self.coder = load_coder(model, profile, batch_size=batch_size,
                                **({"device": pick_device(device)} if profile == "portable" else {}))
        self._desc = self.coder.describe()

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return self._desc

    @metered
    def encode(self, texts: list) -> list[dict | None]:
        """Per text: None (no caption), or {"section", "fallback", "reason"},
        or {"error"} for a value that is not text."""
        out: list = [None] * len(texts)
        idx = []
        for i, t in enumerate(texts):
            if t is None:
                continue
            if not isinstance(t, str):
                out[i] = {"error": f"caption is {type(t).__name__}, not text"}
            else:
                idx.append(i)
        coded = self.coder.encode_batch([texts[i] for i in idx])
        for i, c in zip(idx, coded):
            out[i] = {"section": c.payload, "fallback": c.mode == "fallback", "reason": c.reason}
        return out

    @metered
    def decode(self, sections: list, profiles: dict) -> list[dict]:
        """Per section: {"caption": str|None} or {"error": str}. A wrong model or
        profile, a corrupt stream or a failed check is an error, never a guess."""
        from semarc.codec import record

        try:  # once per call: every section of a shard names the same caption coder
            record.check_profile(profiles, "caption", self._desc)
        except record.FormatError as e:
            return [{"caption": None} if s is None else {"error": f"caption: {e}"} for s in sections]
        out: list = [None] * len(sections)
        todo = [i for i, s in enumerate(sections) if s is not None]
        for i, s in enumerate(sections):
            if s is None:
                out[i] = {"caption": None}
        texts = self.coder.decode_batch([sections[i] for i in todo], errors="return")
        for i, text in zip(todo, texts):
            out[i] = {"error": f"caption: {text}"} if isinstance(text, Exception) else {"caption": text}
        return out
