"""A GeoTIFF's georeference carried from an uploaded image to its mask.

An orthomosaic tile exported from QGIS, OpenDroneMap or Pix4D says where it lies on Earth in
a handful of TIFF tags (GeoTIFF 1.1: model tie point and pixel scale, or a transformation
matrix, and the GeoKey directory naming the CRS). Copied as they are onto the mask, they put
the mask on the field in any GIS, with nothing but Pillow (no GDAL in the services).
Whole orthomosaics larger than the services' image limits go through ``cropseg
segment-raster`` (the batch package) instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, TiffImagePlugin

GEO_KEY_DIRECTORY: Final = 34735
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
GEO_TAGS: Final = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY, 34736, 34737)
"""The tags that make a georeference (34736/34737: the GeoKeys' double and ASCII values)."""
ORIENTATION: Final = 274


@dataclass(frozen=True)
class Georeference:
    """GeoTIFF tags as read: (tag, value, TIFF type) each."""

    tags: tuple[tuple[int, object, int], ...]


def read_georeference(image: Image.Image) -> Georeference | None:
    """The georeference of an opened TIFF, or None when it has none (or a rotated orientation,
    after which its pixels no longer match the tags)."""
    tags = getattr(image, "tag_v2", None)
    return None if tags is None else georeference_in(tags)


def georeference_in(tags: TiffImagePlugin.ImageFileDirectory_v2) -> Georeference | None:
    """The georeference in a TIFF's tags (an image file directory read without its pixels)."""
    if tags.get(ORIENTATION, 1) != 1:
        return None
    found = tuple((tag, tags[tag], tags.tagtype[tag]) for tag in GEO_TAGS if tag in tags)
    present = {tag for tag, _, _ in found}
    placed = {MODEL_PIXEL_SCALE, MODEL_TIEPOINT} <= present or MODEL_TRANSFORMATION in present
    return Georeference(found) if GEO_KEY_DIRECTORY in present and placed else None


def georeference_of(data: bytes) -> Georeference | None:
    """The georeference of an encoded image (a stored upload): read from the TIFF header only,
    None for other formats or a TIFF without one."""
    if not data.startswith((b"II", b"MM")):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["TIFF"]) as image:
            return read_georeference(image)
    except (OSError, SyntaxError, ValueError):
        return None


def encode_tiff(mask: np.ndarray, georeference: Georeference | None) -> bytes:
    """A single-band uint8 TIFF (deflate) of ``mask``, with ``georeference``'s tags when given."""
    directory = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, value, kind in georeference.tags if georeference else ():
        directory[tag] = value
        directory.tagtype[tag] = kind
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(
        buffer, format="TIFF", tiffinfo=directory, compression="tiff_deflate"
    )
    return buffer.getvalue()
