"""The caption coder as a Ray actor (plain class; ``workers.pool`` wraps it)."""

from __future__ import annotations

import os


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


class CaptionWorker:
    def __init__(self, model: str, profile: str, threads: int = 1, batch_size: int = 64) -> None:
        _threads(threads)
        from semarc.codec.caption import CaptionCoder

        self.coder = CaptionCoder(model=model, profile=profile, batch_size=batch_size)
        self._desc = {"lm": self.coder.describe(), "fallback": CaptionCoder.describe_fallback()}

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return self._desc

    def encode(self, texts: list) -> list[dict | None]:
        """Per text: None (no caption), or {"section", "fallback", "reason"},
        or {"error"} for a value that is not text."""
        from semarc.codec import record

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
            out[i] = {"section": record.pack_caption(c.mode, c.payload, texts[i]),
                      "fallback": c.mode == "fallback", "reason": c.reason}
        return out

    def decode(self, sections: list, profiles: dict) -> list[dict]:
        """Per section: {"caption": str|None} or {"error": str}. A wrong model or
        profile, a corrupt stream or a failed check is an error, never a guess."""
        from semarc.codec import record

        out: list = [None] * len(sections)
        todo = []
        slots = {"lm": record.SLOT_CAPTION_LM, "fallback": record.SLOT_CAPTION_FALLBACK}
        refused = {}  # mode -> why the shard's profile does not match the loaded coder (checked once)
        for mode, slot in slots.items():
            try:
                record.check_profile(profiles, slot, self._desc[mode])
            except record.FormatError as e:
                refused[mode] = str(e)
        for i, s in enumerate(sections):
            if s is None:
                out[i] = {"caption": None}
                continue
            try:
                mode, payload, check = record.unpack_caption(s)
            except record.FormatError as e:
                out[i] = {"error": f"caption: {e}"}
                continue
            if mode in refused:
                out[i] = {"error": f"caption: {refused[mode]}"}
            else:
                todo.append((i, mode, payload, check))
        texts = self.coder.decode_batch([(m, p) for _, m, p, _ in todo], errors="return")
        for (i, _, _, check), text in zip(todo, texts):
            if isinstance(text, Exception):
                out[i] = {"error": f"caption: {text}"}
            elif record.caption_check(text) != check:
                out[i] = {"error": "caption: decoded text fails its check (corrupt stream or different model)"}
            else:
                out[i] = {"caption": text}
        return out
