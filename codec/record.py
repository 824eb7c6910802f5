"""Record format v1: bitstream sections and the profile table (docs/format.md).

A record's caption and image are each one *section*::

    byte 0      (FORMAT_VERSION << 4) | slot
    payload     coder-specific (arithmetic code, deflate, image payload)
    check       caption: 1 byte  = crc32(UTF-8 text)  & 0xff
                image:   2 bytes = crc32(latent symbols) & 0xffff (big-endian)

``slot`` indexes the shard's *profile table* (Parquet footer key
``semarc.profiles``), which names each coder by name and full SHA-256
fingerprint (model weights, tokenizer, backend, precision, coding rule).
A decoder refuses a section whose slot names a fingerprint other than that of
the coder it has loaded.
"""

from __future__ import annotations

import json
import zlib

FORMAT_VERSION = 1
SLOT_CAPTION_LM = 0
SLOT_CAPTION_FALLBACK = 1
SLOT_IMAGE = 2
CAPTION_CHECK_BYTES = 1
IMAGE_CHECK_BYTES = 2


class FormatError(ValueError):
    pass


def pack(slot: int, payload: bytes, check: int, check_bytes: int) -> bytes:
    if not 0 <= slot < 16:
        raise ValueError("slot must fit in 4 bits")
    return bytes([(FORMAT_VERSION << 4) | slot]) + payload + check.to_bytes(check_bytes, "big")


def unpack(section: bytes, check_bytes: int) -> tuple[int, bytes, int]:
    if section is None or len(section) < 1 + check_bytes:
        raise FormatError(f"section too short ({0 if section is None else len(section)} bytes): truncated")
    version, slot = section[0] >> 4, section[0] & 0x0F
    if version != FORMAT_VERSION:
        raise FormatError(f"section format version {version} is not supported (this semarc reads {FORMAT_VERSION})")
    return slot, bytes(section[1:len(section) - check_bytes]), int.from_bytes(section[len(section) - check_bytes:], "big")


def caption_check(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) & 0xFF


def pack_caption(mode: str, payload: bytes, text: str) -> bytes:
    slot = SLOT_CAPTION_LM if mode == "lm" else SLOT_CAPTION_FALLBACK
    return pack(slot, payload, caption_check(text), CAPTION_CHECK_BYTES)


def unpack_caption(section: bytes) -> tuple[str, bytes, int]:
    slot, payload, check = unpack(section, CAPTION_CHECK_BYTES)
    if slot == SLOT_CAPTION_LM:
        return "lm", payload, check
    if slot == SLOT_CAPTION_FALLBACK:
        return "fallback", payload, check
    raise FormatError(f"caption section names slot {slot}, which is not a caption coder")


def pack_image(payload: bytes, check: int) -> bytes:
    return pack(SLOT_IMAGE, payload, check, IMAGE_CHECK_BYTES)


def unpack_image(section: bytes) -> tuple[bytes, int]:
    slot, payload, check = unpack(section, IMAGE_CHECK_BYTES)
    if slot != SLOT_IMAGE:
        raise FormatError(f"image section names slot {slot}, which is not an image coder")
    return payload, check


def profile_table(caption_lm: dict, caption_fallback: dict, image: dict) -> dict[str, dict]:
    return {str(SLOT_CAPTION_LM): caption_lm, str(SLOT_CAPTION_FALLBACK): caption_fallback, str(SLOT_IMAGE): image}


def check_profile(table: dict, slot: int, loaded: dict) -> None:
    want = table.get(str(slot))
    if want is None:
        raise FormatError(f"the shard's profile table has no slot {slot}")
    if want.get("fingerprint") != loaded.get("fingerprint"):
        raise FormatError(
            f"slot {slot} was coded with {json.dumps({k: want.get(k) for k in ('kind', 'profile', 'codec', 'model')})} "
            f"fingerprint {str(want.get('fingerprint'))[:16]}..., but the loaded coder has fingerprint "
            f"{str(loaded.get('fingerprint'))[:16]}...: load the same model/profile to decode")
