"""Checks of an uploaded orthomosaic from its TIFF header alone: no pixel is decoded.

A 2 GB GeoTIFF of 625 MP is read as its first image file directory (a few KB to a few MB of
tags and tile offsets) through Pillow's tag reader, never through ``Image.open``: the pixels
are for the worker's GDAL, window by window. So Pillow's decompression-bomb guard, which
protects a decode, is neither met nor switched off (it stays on, process-wide, for the image
routes); the size of the raster is bounded here by ``max_pixels`` instead. Reading the tags
directly also takes the layouts Pillow has no image mode for (two-band red/NIR, BigTIFF).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from PIL import TiffImagePlugin

from cropseg_core.bands import get_layout
from cropseg_core.errors import ClientError, PayloadTooLargeError, UnsupportedMediaTypeError
from cropseg_core.geotiff import GEO_KEY_DIRECTORY, MODEL_PIXEL_SCALE, MODEL_TIEPOINT, georeference_in

TIFF_MAGIC: Final = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
"""Classic TIFF and BigTIFF, little- and big-endian."""
SUFFIXES: Final = (".tif", ".tiff")
WIDTH, LENGTH, BITS_PER_SAMPLE, PHOTOMETRIC, SAMPLES_PER_PIXEL = 256, 257, 258, 262, 277
EXTRA_SAMPLES, SAMPLE_FORMAT = 338, 339
ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA, PALETTE, UNSIGNED = 1, 2, 3, 1
PROJECTED_CRS_KEY, GEOGRAPHIC_CRS_KEY, USER_DEFINED = 3072, 2048, 32767


class NotATiffError(UnsupportedMediaTypeError):
    code = "not_a_tiff"


class RasterTooLargeError(PayloadTooLargeError):
    code = "raster_too_large"


class RasterError(ClientError):
    """A TIFF that is no orthomosaic cropseg can segment (422), saying what to export instead."""

    status_code = 422
    code = "unsupported_raster"


class NotGeoreferencedError(RasterError):
    code = "not_a_geotiff"


@dataclass(frozen=True)
class Orthomosaic:
    """What the header says (the fields of a :class:`~cropseg_core.fields.FieldRecord` it fills)."""

    width: int
    height: int
    bands: int
    alpha: bool
    crs: str | None
    pixel_size: tuple[float, float] | None
    bounds: tuple[float, float, float, float] | None


def check_filename(filename: str) -> None:
    if not filename.lower().endswith(SUFFIXES):
        raise NotATiffError(
            f"{filename!r} is not a GeoTIFF (.tif or .tiff): export the orthomosaic as a GeoTIFF"
        )


def check_magic(head: bytes) -> None:
    """``head``: the file's first four bytes."""
    if head[:4] not in TIFF_MAGIC:
        raise NotATiffError(
            "the file is not a TIFF (its first bytes say otherwise): export the orthomosaic as a GeoTIFF"
        )


def read_tags(path: Path) -> TiffImagePlugin.ImageFileDirectory_v2:
    """The first image file directory of the TIFF at ``path``."""
    with path.open("rb") as handle:
        header = handle.read(16)
        check_magic(header)
        bigtiff = header[2:4] in (b"+\0", b"\0+")
        try:
            tags = TiffImagePlugin.ImageFileDirectory_v2(header if bigtiff else header[:8])
            handle.seek(tags.next)
            tags.load(handle)  # type: ignore[no-untyped-call]  # untyped in Pillow 10
        except (
            OSError,
            SyntaxError,
            ValueError,
            KeyError,
            struct.error,
        ) as e:  # Pillow's ways of saying "damaged"
            raise RasterError(
                f"the TIFF's header cannot be read ({e}): the file is damaged or cut short"
            ) from e
    return tags


def inspect(path: Path, layout_name: str, *, max_pixels: int) -> Orthomosaic:
    """The orthomosaic at ``path``, checked: 8-bit unsigned bands the layout can read, a
    georeference, at most ``max_pixels``."""
    tags = read_tags(path)
    width, height = int(tags.get(WIDTH, 0)), int(tags.get(LENGTH, 0))
    if width <= 0 or height <= 0:
        raise RasterError("the TIFF has no image size in its header: the file is damaged")
    if width * height > max_pixels:
        raise RasterTooLargeError(
            f"the raster is {width} x {height} = {width * height / 1e6:.0f} MP; the limit is "
            f"{max_pixels / 1e6:.0f} MP: split the field or export it at a coarser resolution"
        )
    bands = int(tags.get(SAMPLES_PER_PIXEL, 1))
    bits = tuple(cast(tuple[int, ...], _tuple(tags.get(BITS_PER_SAMPLE, (1,)))))
    formats = tuple(cast(tuple[int, ...], _tuple(tags.get(SAMPLE_FORMAT, (UNSIGNED,)))))
    if set(bits) != {8} or set(formats) != {UNSIGNED}:
        raise RasterError(
            f"the raster's bands are {'/'.join(map(str, sorted(set(bits))))}-bit (sample format "
            f"{'/'.join(map(str, sorted(set(formats))))}); cropseg reads 8-bit unsigned bands: convert "
            "it, e.g. gdal_translate -ot Byte -scale"
        )
    if tags.get(PHOTOMETRIC) == PALETTE:
        raise RasterError("the raster is a palette (indexed-colour) TIFF: export its bands as RGB")
    extra = cast(tuple[int, ...], _tuple(tags.get(EXTRA_SAMPLES, ())))
    alpha = bool(extra) and extra[-1] in (ASSOCIATED_ALPHA, UNASSOCIATED_ALPHA)
    layout = get_layout(layout_name)
    channels = bands - alpha
    if channels not in layout.channel_counts:
        accepted = " or ".join(str(count) for count in layout.channel_counts)
        raise RasterError(
            f"layout {layout.name!r} ({layout.description}) needs {accepted} bands, but the raster has "
            f"{channels}{' besides alpha' if alpha else ''}: choose the layout the file was exported in"
        )
    if georeference_in(tags) is None:
        raise NotGeoreferencedError(
            "not a GeoTIFF: the TIFF has no georeference (or a rotated orientation); export it with "
            "its georeference (QGIS: Export > Save As GeoTIFF; OpenDroneMap and Pix4D write one)"
        )
    return Orthomosaic(
        width=width, height=height, bands=bands, alpha=alpha, crs=_crs(tags), pixel_size=_pixel_size(tags),
        bounds=_bounds(tags, width, height),
    )  # fmt: skip


def _tuple(value: object) -> tuple[object, ...]:
    return value if isinstance(value, tuple) else (value,)


def _crs(tags: TiffImagePlugin.ImageFileDirectory_v2) -> str | None:
    """``EPSG:<code>`` from the GeoKey directory (a projected CRS before a geographic one)."""
    directory = cast(tuple[int, ...], _tuple(tags.get(GEO_KEY_DIRECTORY, ())))
    keys = {
        directory[i]: directory[i + 3]
        for i in range(4, len(directory) - 3, 4)
        if directory[i + 1] == 0  # the value is in the entry itself
    }
    for key in (PROJECTED_CRS_KEY, GEOGRAPHIC_CRS_KEY):
        code = keys.get(key)
        if code is not None and 1024 <= code < USER_DEFINED:
            return f"EPSG:{code}"
    return None


def _pixel_size(tags: TiffImagePlugin.ImageFileDirectory_v2) -> tuple[float, float] | None:
    scale = cast(tuple[float, ...], _tuple(tags.get(MODEL_PIXEL_SCALE, ())))
    return (float(scale[0]), float(scale[1])) if len(scale) >= 2 else None


def _bounds(
    tags: TiffImagePlugin.ImageFileDirectory_v2, width: int, height: int
) -> tuple[float, float, float, float] | None:
    """From the tie point and pixel scale (a raster placed by a transformation matrix: None)."""
    scale = _pixel_size(tags)
    tie = cast(tuple[float, ...], _tuple(tags.get(MODEL_TIEPOINT, ())))
    if scale is None or len(tie) < 6:
        return None
    west = float(tie[3]) - float(tie[0]) * scale[0]
    north = float(tie[4]) + float(tie[1]) * scale[1]
    return (west, north - height * scale[1], west + width * scale[0], north)
