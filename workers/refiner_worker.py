"""The refiner (diffusion image-to-image, ``generate.refiner``) as a Ray actor:
takes the image coder's decoded arrays (straight from the object store),
refines them with their captions and writes them to DST."""

from __future__ import annotations

import os

from .meter import Metered, metered


class RefinerWorker(Metered):
    def __init__(self, config: dict, threads: int = 1, storage_options: dict | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        from semarc.generate.refiner import Refiner, RefinerConfig

        self.refiner = Refiner(RefinerConfig(**config))
        self.storage_options = storage_options or {}

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return self.refiner.describe()

    @metered
    def refine_to(self, decoded: list, captions: list, rels: list[str], keys: list[str], dst: str,
                  fmt: str = "png") -> list[dict]:
        """``decoded``: ``ImageWorker.decode_arrays`` results (an array or
        {"error"} each). Per item {"ok", "width", "height"} or {"error"}; an
        item that failed before (image or caption) is passed through."""
        import fsspec
        import numpy as np

        from .image_worker import write_image

        out: list = [None] * len(decoded)
        idx = []
        for i, (d, c) in enumerate(zip(decoded, captions)):
            if isinstance(d, dict):
                out[i] = d
            elif isinstance(c, dict) and "error" in c:
                out[i] = c
            else:
                idx.append(i)
        if idx:
            try:
                refined = self.refiner.refine([np.asarray(decoded[i]) for i in idx],
                                              [captions[i] for i in idx], [keys[i] for i in idx])
            except Exception as e:  # noqa: BLE001 - a failed batch is its records' error, never a silent skip
                for i in idx:
                    out[i] = {"error": f"refine: {type(e).__name__}: {e}"}
                return out
            fs, root = fsspec.core.url_to_fs(dst, **self.storage_options)
            for i, a in zip(idx, refined):
                out[i] = write_image(fs, root, rels[i], a, fmt)
        return out
