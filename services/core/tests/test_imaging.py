import io
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from cropseg_core.imaging import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedModeError,
    decode_image,
    sniff_format,
)
from cropseg_core.settings import ImageLimits


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"], ids=["png", "tiff"])
def test_lossless_formats_round_trip_exactly(rgb: np.ndarray, fmt: str) -> None:
    decoded = decode_image(encode(Image.fromarray(rgb), fmt))
    assert decoded.format == fmt
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, rgb)


def test_jpeg_decodes_close_to_source(rgb: np.ndarray) -> None:
    smooth = np.full((32, 32, 3), (40, 160, 60), np.uint8)
    decoded = decode_image(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert decoded.format == "JPEG"
    assert np.abs(decoded.pixels.astype(int) - smooth).max() <= 3


def test_format_is_detected_from_content_not_name(rgb: np.ndarray) -> None:
    data = encode(Image.fromarray(rgb), "PNG")
    assert sniff_format(data) == "PNG"
    assert sniff_format(b"GIF89a....") is None


def test_gray_palette_and_one_bit_become_rgb() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_image(encode(Image.fromarray(gray), "PNG"))
    assert decoded.pixels.shape == (16, 16, 3)
    np.testing.assert_array_equal(decoded.pixels[..., 1], gray)
    palette = Image.fromarray(gray).convert("P")
    assert decode_image(encode(palette, "PNG")).pixels.shape == (16, 16, 3)
    binary = Image.fromarray(gray > 127)
    assert set(np.unique(decode_image(encode(binary, "PNG")).pixels)) == {0, 255}


def test_rgba_is_composited_on_black() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :2, 3] = 255  # left half opaque, right half transparent
    pixels = decode_image(encode(Image.fromarray(rgba), "PNG")).pixels
    assert pixels[:, :2].min() == 200
    assert pixels[:, 2:].max() == 0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"], ids=["png", "tiff"])
def test_sixteen_bit_gray_is_scaled_to_eight_bit(fmt: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), fmt))
    assert decoded.original_mode.startswith("I")
    np.testing.assert_array_equal(decoded.pixels[0, :, 0], [0, 1, 128, 255])


def test_exif_orientation_is_applied() -> None:
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:5] = 255  # bright top rows
    image = Image.fromarray(tall)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(encode(image, "JPEG", exif=exif, quality=95))
    assert decoded.pixels.shape == (10, 20, 3)
    # The bright top edge ends up on the right after a clockwise rotation.
    assert decoded.pixels[:, -3:].mean() > 200 > 50 > decoded.pixels[:, :10].mean()


def test_empty_is_rejected() -> None:
    with pytest.raises(EmptyImageError):
        decode_image(b"")


@pytest.mark.parametrize(
    "data",
    [b"hello world", b"GIF89a" + b"\x00" * 40, b"%PDF-1.7\n"],
    ids=["text", "gif", "pdf"],
)
def test_non_images_are_rejected(data: bytes) -> None:
    with pytest.raises(NotAnImageError) as info:
        decode_image(data)
    assert info.value.status_code == 415


def test_other_image_formats_are_rejected(rgb: np.ndarray) -> None:
    for fmt in ("GIF", "BMP", "WEBP"):
        with pytest.raises(NotAnImageError):
            decode_image(encode(Image.fromarray(rgb), fmt))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"], ids=["png", "jpeg", "tiff"])
def test_truncated_files_are_rejected(rgb: np.ndarray, fmt: str) -> None:
    data = encode(Image.fromarray(rgb), fmt)
    with pytest.raises(TruncatedImageError):
        decode_image(data[: len(data) // 2])


def test_header_only_is_truncated(rgb: np.ndarray) -> None:
    with pytest.raises(TruncatedImageError):
        decode_image(encode(Image.fromarray(rgb), "PNG")[:12])


def test_byte_limit(rgb: np.ndarray) -> None:
    data = encode(Image.fromarray(rgb), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1, max_pixels=100)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, limits)
    assert info.value.status_code == 413
    assert str(len(data)) in str(info.value)


def test_pixel_limit_is_checked_before_decoding(rgb: np.ndarray) -> None:
    data = encode(Image.fromarray(rgb), "PNG")
    with pytest.raises(ImageTooLargeError, match="30 = 1200 pixels"):
        decode_image(data, ImageLimits(max_pixels=1199))
    assert decode_image(data, ImageLimits(max_pixels=1200)).width == 40


@pytest.mark.slow
def test_decompression_bomb_is_rejected_cheaply() -> None:
    # 30000 x 30000 one-bit PNG: ~100 KB on disk, 900 MP (2.7 GB as RGB) if decoded.
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError):
            decode_image(bomb)


def test_float_mode_is_unsupported() -> None:
    data = encode(Image.fromarray(np.zeros((4, 4), np.float32)), "TIFF")
    with pytest.raises(UnsupportedModeError):
        decode_image(data)


def test_every_error_has_a_code_and_client_status() -> None:
    for error in (
        EmptyImageError,
        NotAnImageError,
        TruncatedImageError,
        ImageTooLargeError,
        UnsupportedModeError,
    ):
        assert 400 <= error.status_code < 500
        assert error.code


def test_bigtiff_is_a_tiff(rgb: np.ndarray) -> None:
    """Large orthomosaics are written as BigTIFF (II+), not refused as "not an image"."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb, bigtiff=True, photometric="rgb")
    data = buffer.getvalue()
    assert data[:4] == b"II+\x00"
    decoded = decode_image(data)
    assert decoded.format == "TIFF"
    assert np.array_equal(decoded.pixels, rgb)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb, bigtiff=True, byteorder=">", photometric="rgb")
    with pytest.raises(NotAnImageError, match="big-endian BigTIFF is not supported: write it little-endian"):
        decode_image(buffer.getvalue())  # Pillow cannot read it: say so and what to do
