"""The image coder as a Ray actor: reads images where they live (any fsspec
URL), codes them, and on decode writes the reconstructions to DST."""

from __future__ import annotations

import os

from .meter import Metered, metered


class ImageWorker(Metered):
    def __init__(self, codec: str, threads: int = 1, storage_options: dict | None = None,
                 zoo_pretrained: bool = True, device: str = "auto", latent_steps: int = 0,
                 latent_loss: str | None = None) -> None:
        """``latent_steps``, ``latent_loss``: the encoder's latent search
        (``codec/latent_search.py``; 0 steps: none)."""
        import torch

        torch.set_num_threads(max(1, int(threads)))
        from semarc.codec.image import open_coder

        from .device import pick_device

        self.coder = open_coder(codec, device=pick_device(device), zoo_pretrained=zoo_pretrained,
                               latent_steps=latent_steps, latent_loss=latent_loss)
        self.storage_options = storage_options or {}

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return self.coder.describe()

    def _read(self, uri: str) -> bytes:
        import fsspec

        with fsspec.open(uri, "rb", **self.storage_options) as f:
            return f.read()

    @metered
    def encode(self, items: list) -> list[dict]:
        """Per item, a uri or a (uri, caption) pair (a text-guided point's
        encoder reads the caption; None: the empty text): {"width", "height",
        "section"} or {"error"}."""
        from semarc.codec import record
        from semarc.codec.imageio import ImageReadError, read_image

        uris = [it if isinstance(it, str) else it[0] for it in items]
        texts = [None if isinstance(it, str) else it[1] for it in items]
        out: list = [None] * len(uris)
        arrays, idx = [], []
        for i, uri in enumerate(uris):
            try:
                arrays.append(read_image(self._read(uri)))
                idx.append(i)
            except ImageReadError as e:
                out[i] = {"error": f"image: {e}"}
            except FileNotFoundError as e:
                out[i] = {"error": f"image: not found: {e}"}
            except (OSError, PermissionError) as e:
                out[i] = {"error": f"image: cannot read: {type(e).__name__}: {e}"}
        if arrays:
            try:
                coded = self.coder.encode_batch(arrays, texts=[texts[i] for i in idx])
            except Exception:  # isolate: code one by one so one bad image cannot fail the rest
                coded = []
                for a, i in zip(arrays, idx):
                    try:
                        coded.append(self.coder.encode_batch([a], texts=[texts[i]])[0])
                    except Exception as e:
                        coded.append(e)
            for i, c in zip(idx, coded):
                if isinstance(c, Exception):
                    out[i] = {"error": f"image: encode failed: {type(c).__name__}: {c}"}
                else:
                    out[i] = {"width": c.width, "height": c.height,
                              "section": record.pack_image(c.payload, c.check)}
        return out

    @metered
    def decode_arrays(self, sections: list[bytes], profiles: dict, sizes: list | None = None) -> list:
        """Decode sections to uint8 HxWx3 arrays; per section an array or
        {"error"}. ``sizes``: the records' ``(width, height)`` columns; a
        section that decodes to another size is an error (the size in the
        image header is outside the symbol check). A refinement stage receives
        this call's result straight from the object store; ``decode_to``
        writes them."""
        return self._decode_arrays(sections, profiles, sizes)

    def _decode_arrays(self, sections: list[bytes], profiles: dict, sizes: list | None = None) -> list:
        from semarc.codec import record
        from semarc.codec.image import ImageCodecError

        try:  # once per call: every section of a shard names the same image coder
            record.check_profile(profiles, "image", self.coder.describe())
        except record.FormatError as e:
            return [{"error": f"image: {e}"} for _ in sections]
        out: list = [None] * len(sections)
        todo = []
        for i, section in enumerate(sections):
            try:
                todo.append((i, *record.unpack_image(section)))
            except (record.FormatError, ImageCodecError) as e:
                out[i] = {"error": f"image: {e}"}
        for (i, _, _), a in zip(todo, self.coder.decode_batch([(p, c) for _, p, c in todo])):
            out[i] = {"error": f"image: {a}"} if isinstance(a, Exception) else a
            if sizes and sizes[i] is not None and not isinstance(a, Exception) \
                    and (a.shape[1], a.shape[0]) != tuple(sizes[i]):
                out[i] = {"error": f"image: the section decodes to {a.shape[1]}x{a.shape[0]}, the record says "
                                   f"{sizes[i][0]}x{sizes[i][1]} (corrupt bytes)"}
        return out

    @metered
    def decode_to(self, items: list[tuple], profiles: dict, dst: str, fmt: str = "png") -> list[dict]:
        """Decode ``(relative output path, section[, (width, height)])`` items,
        write each image to ``dst/relpath``; per item {"ok": True, "width",
        "height"} or {"error"}."""
        import fsspec

        arrays = self._decode_arrays([it[1] for it in items], profiles, [it[2] if len(it) > 2 else None for it in items])
        fs, root = fsspec.core.url_to_fs(dst, **self.storage_options)
        return [a if isinstance(a, dict) else write_image(fs, root, rel, a, fmt)
                for (rel, *_), a in zip(items, arrays)]


def write_image(fs, root: str, rel: str, a, fmt: str) -> dict:
    """Write the uint8 HxWx3 array ``a`` as ``root/rel`` in ``fmt``; returns the
    record's decode result {"ok", "width", "height"}."""
    from semarc.codec.imageio import encode_as

    path = f"{root.rstrip('/')}/{rel}"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, encode_as(a, fmt))
    return {"ok": True, "width": int(a.shape[1]), "height": int(a.shape[0])}
