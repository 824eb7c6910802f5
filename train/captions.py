"""Image-caption pairs for text-guided codecs (``--arch text-checkerboard``).

``train/corpus_captions.jsonl`` (package data) holds one caption for every
photo of the corpus (``train/corpus_sources.json``), train and validation
splits: ``key``, ``sha256`` (of the corpus file the caption describes) and
``caption``. They were written one by one, each after viewing its photo (no
captioning model was used), in the style of the LLaVA captions of Kodak
(``../shared/data/kodak_captions.csv``): one factual paragraph of three to five
sentences on the objects, their colours and the layout, with no names of
places or people that the image does not show in writing. Kodak is not in
it: Kodak is for the final report only.

A caption is bound to its photo by the file's SHA-256, so a corpus built
from other package versions never pairs a caption with another image. A
random crop of a photo keeps its photo's caption in training.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CAPTIONS_FILE = Path(__file__).with_name("corpus_captions.jsonl")


def load(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The manifest's rows by the SHA-256 of their photo (``sha256``);
    each row has ``key`` and ``caption``."""
    out: dict[str, dict] = {}
    for n, line in enumerate(Path(path or CAPTIONS_FILE).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("caption"), str) or not isinstance(row.get("sha256"), str):
            raise ValueError(f"{path or CAPTIONS_FILE}:{n}: a row needs sha256 and caption (text)")
        out[row["sha256"]] = row
    return out


def for_rows(rows: list[dict], path: str | os.PathLike | None = None) -> list[str]:
    """The caption of each corpus row (``corpus.read_manifest``), in order;
    a row whose photo has no caption is an error that names it."""
    table = load(path)
    missing = [r["key"] for r in rows if r["sha256"] not in table]
    if missing:
        raise SystemExit(f"{len(missing)} corpus photo(s) have no caption in {path or CAPTIONS_FILE}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [table[r["sha256"]]["caption"] for r in rows]


def digest(path: str | os.PathLike | None = None) -> str:
    """SHA-256 of the manifest's (sha256, caption) pairs, in a fixed order: a run's identity."""
    table = load(path)
    h = hashlib.sha256()
    for sha in sorted(table):
        h.update(json.dumps([sha, table[sha]["caption"]]).encode())
    return h.hexdigest()
