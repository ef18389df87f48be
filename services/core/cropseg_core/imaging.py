"""Safe decoding of untrusted image bytes into RGB uint8 arrays.

Every image that enters cropseg (uploads, labels, inference requests, datasets) goes
through :func:`decode_image`. It accepts PNG, JPEG and TIFF recognised by their content
(never the file name), enforces byte and pixel limits *before* pixel data is decoded
(so a decompression bomb costs nothing), applies the EXIF orientation and returns RGB
uint8 whatever the stored mode (gray, palette, RGBA, 16-bit, CMYK).

Errors form one hierarchy so callers map them to responses in one place::

    ImageDecodeError                 (status_code 400)
     ├── EmptyImageError             nothing was sent
     ├── NotAnImageError             bytes are not PNG/JPEG/TIFF (415)
     ├── TruncatedImageError         header is fine, pixel data is cut off or corrupt
     ├── ImageTooLargeError          over max_bytes or max_pixels (413)
     └── UnsupportedModeError        a pixel format we cannot turn into RGB uint8 (415)
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cropseg_core.geotiff import Georeference, read_georeference
from cropseg_core.settings import PIXEL_CEILING, ImageLimits

# Set explicitly rather than trusting Pillow's default: Pillow warns above this many
# pixels and raises above twice as many. Our own, lower limit is checked first.
Image.MAX_IMAGE_PIXELS = PIXEL_CEILING
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # little-endian BigTIFF (64-bit offsets: large orthomosaics)
)
_BIG_ENDIAN_BIGTIFF: Final = b"MM\x00+"  # Pillow cannot read it: refused with what to do
SUPPORTED_FORMATS: Final = ("PNG", "JPEG", "TIFF")
_SIXTEEN_BIT_MODES: Final = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageDecodeError(ValueError):
    """Base class: the bytes cannot be accepted as an image. ``code`` is machine-readable."""

    status_code = 400
    code = "invalid_image"


class EmptyImageError(ImageDecodeError):
    code = "empty_image"


class NotAnImageError(ImageDecodeError):
    status_code = 415
    code = "not_an_image"


class TruncatedImageError(ImageDecodeError):
    code = "truncated_image"


class ImageTooLargeError(ImageDecodeError):
    status_code = 413
    code = "image_too_large"


class UnsupportedModeError(ImageDecodeError):
    status_code = 415
    code = "unsupported_mode"


@dataclass(frozen=True)
class DecodedImage:
    """An RGB uint8 image (H, W, 3) and what it was before conversion."""

    pixels: np.ndarray
    format: str
    original_mode: str
    georeference: Georeference | None = None
    """A GeoTIFF's tags that place it on Earth (None for other files)."""

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def sniff_format(data: bytes) -> str | None:
    """Return ``PNG``, ``JPEG`` or ``TIFF`` from the leading bytes, or None."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode untrusted ``data`` into RGB uint8, or raise a subclass of ImageDecodeError."""
    image, fmt, georeference = _open(data, limits or ImageLimits())
    return DecodedImage(_to_rgb_uint8(image), fmt, image.mode, georeference)


def decode_channels(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode untrusted ``data`` keeping its channels as stored: (H, W, C) uint8, C = 1-4.

    For sensor layouts other than true colour (:mod:`cropseg_core.bands`): a 4-channel file
    may hold a near-infrared band where Pillow sees alpha, and a 2-channel one a red/NIR pair,
    so nothing is composited or converted here; 16-bit grey is scaled to 8 bits.
    """
    image, fmt, georeference = _open(data, limits or ImageLimits())
    return DecodedImage(_to_channels_uint8(image), fmt, image.mode, georeference)


def image_pixels(data: bytes, limits: ImageLimits | None = None) -> int:
    """Width x height as the header declares it, checked like a decode is, without decoding (what
    a request reserves memory for before it decodes: :class:`cropseg_core.web.limits.MemoryBudget`)."""
    image = _open(data, limits or ImageLimits(), load=False)[0]
    return int(image.width * image.height)


def _open(
    data: bytes, limits: ImageLimits, *, load: bool = True
) -> tuple[Image.Image, str, Georeference | None]:
    if not data:
        raise EmptyImageError("the image is empty: send the file's bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    fmt = sniff_format(data)
    if data.startswith(_BIG_ENDIAN_BIGTIFF):
        raise NotAnImageError(
            "big-endian BigTIFF is not supported: write it little-endian "
            "(e.g. gdal_translate -co BIGTIFF=YES in.tif out.tif on any PC), or as a classic TIFF"
        )
    if fmt is None:
        formats = ", ".join(SUPPORTED_FORMATS)
        raise NotAnImageError(f"the data is not a {formats} image (detected from its content)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            _check_pixels(width, height, limits)
            if not load:
                return image, fmt, None
            georeference = read_georeference(image) if fmt == "TIFF" else None
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(
            f"the image declares more than {limits.max_pixels} pixels (decompression bomb)"
        ) from e
    except UnidentifiedImageError as e:
        raise TruncatedImageError(
            f"the data starts like a {fmt} image but its header is truncated or invalid"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        if "mode" in str(e).lower() or "unsupported" in str(e).lower():
            raise UnsupportedModeError(f"the {fmt} image uses a pixel format that cannot be read: {e}") from e
        raise TruncatedImageError(f"the {fmt} image is truncated or corrupt: {e}") from e
    return image, fmt, georeference


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise TruncatedImageError(f"the image declares an invalid size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )


def _grey16_to_uint8(image: Image.Image) -> np.ndarray:
    # 16-bit gray: full-range scaling keeps relative brightness (65535 -> 255).
    gray = np.asarray(image, dtype=np.int64)
    return ((np.clip(gray, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def _to_channels_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _grey16_to_uint8(image)[..., None]
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        pixels = np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(pixels if pixels.ndim == 3 else pixels[..., None])
    if mode == "1":
        return np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8)[..., None])
    if mode in ("P", "PA"):
        return _to_channels_uint8(
            image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
        )
    return _to_rgb_uint8(image)


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return np.repeat(_grey16_to_uint8(image)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels carry no data (e.g. outside an orthomosaic): composite on black,
        # which is how out-of-field regions look everywhere else in cropseg.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    raise UnsupportedModeError(
        f"pixel mode {mode!r} is not supported: send 8-bit RGB/RGBA/gray or 16-bit gray"
    )
