"""The bundled sample: five real photos that ship inside scikit-image, with
captions written by the semarc team, so the main job has real work offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

SAMPLE = [
    ("astronaut.png", "astronaut.png",
     "Portrait of a smiling astronaut with short brown hair in an orange flight suit with mission patches, "
     "holding a white helmet, with an American flag and a model of the space shuttle behind her."),
    ("chelsea.png", "chelsea.png",
     "Close-up of a tabby cat with green eyes, a pink nose and white whiskers, looking to the right."),
    ("coffee.png", "coffee.png",
     "A red cup of espresso with crema on a red saucer with a metal spoon, on a wooden table."),
    ("rocket.jpg", "rocket.jpg",
     "A rocket standing on its launch pad at dusk between tall lightning towers, lit by floodlights under a "
     "deep blue sky."),
    ("motorcycle_left.png", "motorcycle.png",
     "A red motorcycle with a black seat parked on a concrete floor in a garage, with shelves of boxes and a "
     "wooden bench behind it."),
]


def skimage_data_dir() -> Path:
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def write_sample(dst: str) -> str:
    """Write the sample images to ``dst/images/`` and ``dst/manifest.jsonl``
    (relative uris, captions); returns the manifest path."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(dst)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/images", exist_ok=True)
    src = skimage_data_dir()
    lines = []
    for name, out, caption in SAMPLE:
        fs.pipe_file(f"{root}/images/{out}", (src / name).read_bytes())
        lines.append(json.dumps({"uri": f"images/{out}", "key": out.rsplit(".", 1)[0], "caption": caption}))
    fs.pipe_file(f"{root}/manifest.jsonl", ("\n".join(lines) + "\n").encode())
    return fs.unstrip_protocol(f"{root}/manifest.jsonl") if "://" in dst else f"{root}/manifest.jsonl"
