"""The captioner as a Ray actor (plain class; ``workers.pool`` wraps it):
reads images where they live (any fsspec URL) and captions them."""

from __future__ import annotations

import os

from .meter import Metered, metered


class CaptionerWorker(Metered):
    def __init__(self, config: dict, threads: int = 1, storage_options: dict | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        from semarc.generate.captioner import make_captioner

        self.captioner = make_captioner(config)
        self.storage_options = storage_options or {}

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return self.captioner.identity()

    def _read(self, uri: str) -> bytes:
        import fsspec

        with fsspec.open(uri, "rb", **self.storage_options) as f:
            return f.read()

    @metered
    def caption(self, uris: list[str]) -> list[dict]:
        """Per uri: {"caption": str} or {"error": "caption: ..."}; a bad image
        never fails the others."""
        out: list = [None] * len(uris)
        data, idx = [], []
        for i, uri in enumerate(uris):
            try:
                data.append(self._read(uri))
                idx.append(i)
            except FileNotFoundError as e:
                out[i] = {"error": f"caption: image not found: {e}"}
            except Exception as e:  # noqa: BLE001 - any storage error is this record's error
                out[i] = {"error": f"caption: cannot read image: {type(e).__name__}: {e}"}
        if data:
            for i, c in zip(idx, self.captioner.caption_batch(data)):
                out[i] = {"error": f"caption: not generated: {c}"} if isinstance(c, Exception) else {"caption": c}
        return out
