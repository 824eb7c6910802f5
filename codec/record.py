"""Record format v2: bitstream sections and the profile table (docs/format.md).

A record's caption and image are each one *section*, stored in its own column.

* Caption section: one arithmetic-coded stream (``codec/caption.py``): mode
  symbol, tokens or fallback bytes, termination carrying check bits. No header
  byte, length field or separate check byte.
* Image section::

    byte 0      (FORMAT_VERSION << 4) | SLOT_IMAGE
    payload     varint width, varint height, the codec's strings
    check       2 bytes = crc32(latent symbols) & 0xffff (big-endian)

The shard's *profile table* (Parquet footer key ``semarc.profiles``) names the
coder of each column (``caption``, ``image``) by name and full SHA-256
fingerprint (model weights, tokenizer, backend, precision, coding rule). A
decoder refuses a column whose fingerprint is not that of the coder it loaded.
"""

from __future__ import annotations

import json

FORMAT_VERSION = 2
SLOT_IMAGE = 2
IMAGE_CHECK_BYTES = 2


class FormatError(ValueError):
    pass


def pack_image(payload: bytes, check: int) -> bytes:
    return bytes([(FORMAT_VERSION << 4) | SLOT_IMAGE]) + payload + check.to_bytes(IMAGE_CHECK_BYTES, "big")


def unpack_image(section: bytes) -> tuple[bytes, int]:
    if section is None or len(section) < 1 + IMAGE_CHECK_BYTES:
        raise FormatError(f"image section too short ({0 if section is None else len(section)} bytes): truncated")
    version, slot = section[0] >> 4, section[0] & 0x0F
    if version != FORMAT_VERSION:
        raise FormatError(f"image section format version {version} is not supported (this semarc reads "
                          f"{FORMAT_VERSION})")
    if slot != SLOT_IMAGE:
        raise FormatError(f"image section names slot {slot}, which is not an image coder")
    return bytes(section[1:-IMAGE_CHECK_BYTES]), int.from_bytes(section[-IMAGE_CHECK_BYTES:], "big")


def profile_table(caption: dict, image: dict) -> dict[str, dict]:
    return {"caption": caption, "image": image}


def check_profile(table: dict, column: str, loaded: dict) -> None:
    want = table.get(column)
    if want is None:
        raise FormatError(f"the shard's profile table names no coder for {column!r}")
    if want.get("fingerprint") != loaded.get("fingerprint"):
        differ = sorted(k for k in set(want) | set(loaded) if k != "fingerprint" and want.get(k) != loaded.get(k))
        detail = "; ".join(f"{k}: coded {json.dumps(want.get(k))[:80]}, loaded {json.dumps(loaded.get(k))[:80]}"
                           for k in differ[:6])
        raise FormatError(
            f"{column} was coded with {json.dumps({k: want.get(k) for k in ('kind', 'profile', 'codec', 'model')})} "
            f"fingerprint {str(want.get('fingerprint'))[:16]}..., but the loaded coder has fingerprint "
            f"{str(loaded.get('fingerprint'))[:16]}... ({detail or 'same fields, other values'}): "
            f"load the same model/profile under the same conditions to decode")
