import io

import numpy as np
import pytest
from PIL import Image

from semarc.codec import image_models, record
from semarc.codec.image import ImageCodecError, ImageCoder
from semarc.codec.imageio import ImageReadError, read_image
from semarc.jobs.sample import SAMPLE, skimage_data_dir


def _sample_arrays(n=3):
    return [read_image((skimage_data_dir() / name).read_bytes()) for name, _, _ in SAMPLE[:n]]


def _png(arr, mode=None, **kw):
    buf = io.BytesIO()
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_roundtrip_keeps_source_size(image_coder):
    arrays = _sample_arrays(3) + [np.full((1, 1, 3), 200, np.uint8), np.zeros((17, 300, 3), np.uint8)]
    coded = image_coder.encode_batch(arrays)
    back = image_coder.decode_batch([(c.payload, c.check) for c in coded])
    for a, b in zip(arrays, back):
        assert isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == np.uint8
    # the reconstruction resembles the source (a real codec, not noise)
    err = np.abs(back[0].astype(float) - arrays[0].astype(float)).mean()
    assert err < 40


def test_bytes_identical_for_batch_sizes_1_and_4(image_coder):
    arr = _sample_arrays(1)[0]
    arrays = [arr, arr[:, ::-1].copy(), arr[::-1].copy(), arr]
    one = [image_coder.encode_batch([a])[0] for a in arrays]
    four = image_coder.encode_batch(arrays)
    assert [c.payload for c in one] == [c.payload for c in four]
    d1 = [image_coder.decode_batch([(c.payload, c.check)])[0] for c in one]
    d4 = image_coder.decode_batch([(c.payload, c.check) for c in four])
    for a, b in zip(d1, d4):
        assert np.array_equal(a, b)


def test_bytes_identical_for_1_and_2_threads(tmp_path):
    from conftest import assert_same_across_threads

    assert_same_across_threads("semarc-f1", tmp_path)


def test_corrupt_truncated_and_wrong_model_are_errors(image_coder):
    arr = _sample_arrays(1)[0]
    (c,) = image_coder.encode_batch([arr])
    bad = [c.payload[:3], c.payload[: len(c.payload) // 2], b"", b"\xff\xff\xff\xff\x0f" + c.payload[2:]]
    flipped = bytearray(c.payload)
    flipped[len(flipped) // 2] ^= 0x10
    bad.append(bytes(flipped))
    res = image_coder.decode_batch([(p, c.check) for p in bad])
    assert all(isinstance(r, ImageCodecError) for r in res), res
    table = record.profile_table({"fingerprint": "a"}, image_coder.describe())
    record.check_profile(table, "image", image_coder.describe())
    with pytest.raises(record.FormatError):
        record.check_profile(table, "image", {"fingerprint": "0" * 64, "codec": "other"})


def test_section_header_version_and_slot_checked():
    sec = record.pack_image(b"payload", 0xBEEF)
    assert record.unpack_image(sec) == (b"payload", 0xBEEF)
    with pytest.raises(record.FormatError, match="version"):
        record.unpack_image(bytes([0x12]) + sec[1:])
    with pytest.raises(record.FormatError, match="not an image coder"):
        record.unpack_image(bytes([(record.FORMAT_VERSION << 4) | 1]) + sec[1:])
    with pytest.raises(record.FormatError, match="truncated"):
        record.unpack_image(sec[:2])


def test_shipped_checkpoint_loads_weights_only_with_stable_fingerprint():
    points = image_models.shipped_rate_points()
    assert "semarc-f1" in points
    a = image_models.load_checkpoint(points["semarc-f1"])
    b = image_models.load_checkpoint(points["semarc-f1"])
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64


def test_zoo_model_path_offline_with_random_weights():
    coder = ImageCoder("zoo:bmshj2018-hyperprior:1", zoo_pretrained=False)
    arr = _sample_arrays(1)[0][:100, :130].copy()
    (c,) = coder.encode_batch([arr])
    (back,) = coder.decode_batch([(c.payload, c.check)])
    assert back.shape == arr.shape
    assert coder.describe()["fingerprint"] != ImageCoder().describe()["fingerprint"]


# -- input conversion rules -------------------------------------------------------------
def test_read_image_conversion_rules():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(read_image(_png(rgb)), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(read_image(_png(gray)), np.stack([gray] * 3, -1))
    rgba = np.dstack([rgb, np.zeros((20, 30), np.uint8)])  # fully transparent -> white
    assert (read_image(_png(rgba)) == 255).all()
    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    out = read_image(_png(g16))
    assert out.shape == (20, 30, 3) and out[..., 0][0, 1] == round(100 / 257)
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert read_image(buf.getvalue()).shape == (20, 30, 3)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    assert read_image(cmyk.getvalue()).shape == (20, 30, 3)


def test_read_image_applies_exif_orientation():
    rgb = np.zeros((20, 30, 3), np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert read_image(buf.getvalue()).shape == (30, 20, 3)


def test_read_image_animated_takes_first_frame():
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = read_image(buf.getvalue())
    assert out.shape == (6, 8, 3) and out[0, 0, 0] > 200 and out[0, 0, 2] < 50


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"this is not an image at all", "cannot decode"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "cannot decode"),
])
def test_read_image_errors(data, match):
    with pytest.raises(ImageReadError, match=match):
        read_image(data)


def test_truncated_jpeg_and_bomb_are_errors():
    rgb = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpg = _png(rgb, format="JPEG")
    with pytest.raises(ImageReadError):
        read_image(jpg[: len(jpg) // 3])
    with pytest.raises(ImageReadError, match="bomb|exceeds"):
        read_image(_png(np.zeros((100, 100, 3), np.uint8)), max_pixels=5000)


def test_huge_declared_size_refused_before_decoding():
    """A PNG header declaring 100000 x 100000 pixels (a decompression bomb) is
    refused from its header alone."""
    import struct
    import zlib as _z

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", _z.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", _z.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(ImageReadError, match="exceeds"):
        read_image(png)
