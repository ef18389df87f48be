"""Generated orthomosaics for tests, benchmarks and trying the raster tools without a drone.

A field of crop rows on bare soil, as an OpenDroneMap orthophoto stores it: RGBA GeoTIFF
(alpha 0 outside the field, an ellipse), UTM zone 32N, ``gsd_m`` metres per pixel, tiled and
deflate-compressed. Written block by block, so a 32k x 32k raster needs no more memory than
a 2k one. Plants sit on a jittered lattice (rows ``ROW_SPACING_PX`` apart), leaves are discs
of varying size and green; the soil is a noisy brown. Deterministic for a ``seed``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

ROW_SPACING_PX = 60
PLANT_SPACING_PX = 36
BLOCK = 512
ORIGIN = (500_000.0, 5_300_000.0)  # UTM 32N, central Europe


def _hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per (a, b) lattice cell (a small integer hash, vectorised)."""
    x = (a.astype(np.uint64) * np.uint64(0x9E3779B1) + b.astype(np.uint64) * np.uint64(0x85EBCA77)
         + np.uint64(seed * 0xC2B2AE3D + 1)) & np.uint64(0xFFFFFFFF)  # fmt: skip
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    return (x & np.uint64(0xFFFFFF)).astype(np.float64) / float(1 << 24)


def field_block(top: int, left: int, height: int, width: int, side: int, seed: int = 0) -> np.ndarray:
    """RGBA pixels of the block at (``top``, ``left``) of a ``side`` x ``side`` field."""
    y, x = np.mgrid[top : top + height, left : left + width]
    rng = np.random.default_rng([seed, top, left])
    soil = np.stack(
        [np.full((height, width), 122.0), np.full((height, width), 98.0), np.full((height, width), 72.0)], -1
    )
    soil += rng.normal(0, 9, (height, width, 1))
    row, plant = y // ROW_SPACING_PX, x // PLANT_SPACING_PX
    centre_y = (row + 0.5) * ROW_SPACING_PX + (_hash(row, plant, seed) - 0.5) * 10
    centre_x = (plant + 0.5) * PLANT_SPACING_PX + (_hash(plant, row, seed + 1) - 0.5) * 12
    radius = 6 + 9 * _hash(row, plant, seed + 2)
    leaf = (y - centre_y) ** 2 + (x - centre_x) ** 2 < radius**2
    green = 0.7 + 0.5 * _hash(row, plant, seed + 3)[..., None]
    plants = np.array([58.0, 128.0, 44.0]) * green + rng.normal(0, 7, (height, width, 1))
    rgb = np.where(leaf[..., None], plants, soil).clip(0, 255).astype(np.uint8)
    inside = ((y - side / 2) / (side * 0.48)) ** 2 + ((x - side / 2) / (side * 0.46)) ** 2 <= 1
    alpha = np.where(inside, np.uint8(255), np.uint8(0))
    rgb[~inside] = 0
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def write_field(
    path: Path,
    side: int,
    *,
    gsd_m: float = 0.02,
    georeferenced: bool = True,
    seed: int = 0,
    compress: str | None = "deflate",
) -> Path:
    """Write a ``side`` x ``side`` field orthomosaic to ``path`` (see the module); ``compress``
    None writes the pixels as they are (4 bytes each: 22,400 px a side is a 2 GB file)."""
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint8", "tiled": True,
        "blockxsize": BLOCK, "blockysize": BLOCK, "photometric": "RGB", "BIGTIFF": "IF_SAFER",
        **({"compress": compress} if compress else {}),
        **({"crs": "EPSG:32632", "transform": from_origin(*ORIGIN, gsd_m, gsd_m)} if georeferenced else {}),
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as out:
            out.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
            for top in range(0, side, BLOCK):
                for left in range(0, side, BLOCK):
                    height, width = min(BLOCK, side - top), min(BLOCK, side - left)
                    block = field_block(top, left, height, width, side, seed)
                    out.write(np.moveaxis(block, -1, 0), window=Window(left, top, width, height))
    return path
