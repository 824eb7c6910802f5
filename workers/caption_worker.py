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

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        from semarc.codec.caption import CaptionCoder

        return {"lm": self.coder.describe(), "fallback": CaptionCoder.describe_fallback()}

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
        from semarc.codec.caption import CaptionCoder, CaptionError

        out: list = [None] * len(sections)
        todo = []
        for i, s in enumerate(sections):
            if s is None:
                out[i] = {"caption": None}
                continue
            try:
                mode, payload, check = record.unpack_caption(s)
                slot = record.SLOT_CAPTION_LM if mode == "lm" else record.SLOT_CAPTION_FALLBACK
                loaded = self.coder.describe() if mode == "lm" else CaptionCoder.describe_fallback()
                record.check_profile(profiles, slot, loaded)
                todo.append((i, mode, payload, check))
            except (record.FormatError, CaptionError) as e:
                out[i] = {"error": f"caption: {e}"}
        try:
            texts = self.coder.decode_batch([(m, p) for _, m, p, _ in todo])
            results = list(zip(todo, texts))
        except CaptionError:
            results = []
            for it in todo:  # find the bad one(s): decode one by one
                try:
                    results.append((it, self.coder.decode_batch([(it[1], it[2])])[0]))
                except CaptionError as e:
                    out[it[0]] = {"error": f"caption: {e}"}
        for (i, _, _, check), text in results:
            if record.caption_check(text) != check:
                out[i] = {"error": "caption: decoded text fails its check (corrupt stream or different model)"}
            else:
                out[i] = {"caption": text}
        return out
