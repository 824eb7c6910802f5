"""Reading any image file into the RGB array that semarc codes.

The conversion rule (docs/format.md, "Input images"):

* the file is opened with Pillow; files whose declared size exceeds
  ``MAX_PIXELS`` (40 MP) are refused before any pixel is decoded (memory bound,
  decompression bombs);
* EXIF orientation is applied (``ImageOps.exif_transpose``); width and height
  are those of the oriented image;
* animated images (GIF, WebP, APNG, multi-page TIFF): the first frame;
* alpha (RGBA, LA, PA, palette with transparency) is composited onto white;
* 16-bit and 32-bit integer and float greyscale (I;16, I, F) are scaled to 8
  bits by their type's full range (I;16: v/257; F: clipped to [0, 1]);
* CMYK (with its ICC profile ignored), YCbCr, LAB, HSV, 1-bit, L, P: Pillow's
  conversion to RGB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Largest image semarc codes (40 MP): bounds a worker's memory (the codec's first
# layer holds 64 float32 channels at half resolution) and stops decompression bombs
# before any pixel is decoded. Larger images become error rows.
MAX_PIXELS = 40_000_000


class ImageReadError(ValueError):
    pass


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(im, dtype=np.uint16).astype(np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        hi = 65535 if a.max(initial=0) > 255 else 255
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def read_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> HxWx3 uint8 RGB array, by the documented rule."""
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(f"declared size {w}x{h} exceeds the {max_pixels}-pixel limit "
                                     f"(memory bound and decompression-bomb guard)")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"decompression bomb guard: {e}") from e
    except Exception as e:  # Pillow raises many types for bad data
        raise ImageReadError(f"cannot decode image: {type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_as(arr: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    fmt = fmt.lower()
    if fmt == "png":
        return encode_png(arr)
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        Image.fromarray(arr, "RGB").save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown output image format {fmt!r} (png, webp, jpeg)")
    return buf.getvalue()
