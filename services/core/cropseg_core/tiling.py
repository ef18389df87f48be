"""Cutting large images into overlapping tiles and stitching their predictions back.

Every tile of one image has the same shape (the last row and column are shifted back to end
at the border), so tiles batch together. Each tile keeps only the part of its prediction
nearest its centre: the seam between two neighbours sits in the middle of their overlap,
where both saw at least ``overlap / 2`` pixels of context. No blending is needed and every
output pixel comes from exactly one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise, product

import numpy as np


@dataclass(frozen=True)
class Span:
    """One tile along one axis: it reads [start, start + size) and keeps [keep_from, keep_to)."""

    start: int
    keep_from: int
    keep_to: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span
    height: int
    width: int

    def read(self, image: np.ndarray) -> np.ndarray:
        return image[
            self.rows.start : self.rows.start + self.height, self.cols.start : self.cols.start + self.width
        ]


def plan_axis(length: int, tile_size: int, overlap: int) -> tuple[int, list[Span]]:
    """Tile size along this axis and the spans covering ``[0, length)``."""
    if length <= tile_size:
        return length, [Span(0, 0, length)]
    stride = tile_size - overlap
    starts = [*range(0, length - tile_size, stride), length - tile_size]
    seams = [(nxt + prev + tile_size) // 2 for prev, nxt in pairwise(starts)]
    bounds = [0, *seams, length]
    return tile_size, [Span(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` image; one tile when it fits in ``tile_size``."""
    tile_h, rows = plan_axis(height, tile_size, overlap)
    tile_w, cols = plan_axis(width, tile_size, overlap)
    return [Tile(r, c, tile_h, tile_w) for r, c in product(rows, cols)]


class Mosaic:
    """Per-tile (h, w) predictions written into one (height, width) array as they arrive, so a
    large image never holds all its tiles' predictions at once."""

    def __init__(self, tiles: list[Tile], height: int, width: int) -> None:
        self.tiles = tiles
        self.height = height
        self.width = width
        self.out: np.ndarray | None = None

    def put(self, index: int, prediction: np.ndarray) -> None:
        tile = self.tiles[index]
        if len(self.tiles) == 1 and (tile.height, tile.width) == (self.height, self.width):
            self.out = prediction
            return
        if self.out is None:
            self.out = np.empty((self.height, self.width), dtype=prediction.dtype)
        r, c = tile.rows, tile.cols
        self.out[r.keep_from : r.keep_to, c.keep_from : c.keep_to] = prediction[
            r.keep_from - r.start : r.keep_to - r.start, c.keep_from - c.start : c.keep_to - c.start
        ]

    def result(self) -> np.ndarray:
        if self.out is None:
            raise ValueError("no tile prediction was put into the mosaic")
        return self.out


def stitch(predictions: list[np.ndarray], tiles: list[Tile], height: int, width: int) -> np.ndarray:
    """Assemble per-tile (h, w) predictions into one (height, width) array."""
    mosaic = Mosaic(tiles, height, width)
    for index, prediction in enumerate(predictions):
        mosaic.put(index, prediction)
    return mosaic.result()
