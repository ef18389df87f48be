"""Vegetation indices and Otsu's threshold: what QGIS, OpenDroneMap or Pix4Dfields compute.

On images in the model's bands (:mod:`cropseg_core.bands`):

* **ExG** (excess green) ``2g - r - b`` on chromaticity coordinates, for true colour;
* **NDVI** ``(NIR - R) / (NIR + R)`` wherever near-infrared and red exist;
* the **difference** ``NIR - R``, NDVI's numerator, which separates plants from dark soil
  better where both bands are small.

:func:`index_mask` thresholds the index its layout allows with Otsu's method over the
in-field pixels: the baseline the model must beat, and the pipeline's rough vegetation
mask for choosing a working resolution (:func:`typical_leaf_width`). numpy only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from cropseg_core.bands import Layout
from cropseg_core.masks import BLACK_LEVEL


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 r, g, b with r + g + b = 1 (0 on black)."""
    values = rgb.astype(np.float32)
    total = values.sum(axis=2, keepdims=True)
    return np.divide(values, total, out=np.zeros_like(values), where=total > 0)


def excess_green(rgb: np.ndarray) -> np.ndarray:
    c = chromaticity(rgb[..., :3])
    return 2 * c[..., 1] - c[..., 0] - c[..., 2]


def ndvi(bands: np.ndarray) -> np.ndarray:
    """(H, W, 4) red, green, blue, NIR -> NDVI in [-1, 1] (0 where both are 0)."""
    red = bands[..., 0].astype(np.float32)
    nir = bands[..., 3].astype(np.float32)
    total = nir + red
    return np.divide(nir - red, total, out=np.zeros_like(total), where=total > 0)


def nir_red_difference(bands: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """(H, W, 4) red, green, blue, NIR -> NIR - red in [-255, 255]: NDVI's numerator, which
    unlike NDVI does not blow up dark soil where both bands are small (int16: half the memory)."""
    return bands[..., 3].astype(dtype) - bands[..., 0].astype(dtype)


def strided_sample(bands: np.ndarray, max_pixels: int = 250_000) -> np.ndarray:
    """An evenly strided view of at most about ``max_pixels`` pixels: enough for a threshold."""
    step = max(1, int(np.sqrt(bands.shape[0] * bands.shape[1] / max_pixels)))
    return bands[::step, ::step]


def vegetation_index(bands: np.ndarray, layout: Layout) -> np.ndarray:
    """The index the layout allows: NDVI where it has NIR and red, else excess green."""
    return ndvi(bands) if layout.index == "ndvi" else excess_green(bands[..., :3])


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: maximises the between-class variance."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # Empty bins between two modes give a plateau of equal scores: take its middle rather
    # than its first bin, so the threshold sits between the modes, not at the edge of one.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[(best[0] + best[-1]) // 2 + 1])


def threshold_otsu(index: np.ndarray, in_field: np.ndarray) -> np.ndarray:
    """uint8 mask (255 = vegetation) of ``index`` above Otsu's threshold over ``in_field``."""
    mask = np.zeros(index.shape, np.uint8)
    if in_field.any():
        mask[(index > otsu_threshold(index[in_field])) & in_field] = 255
    return mask


def index_mask(bands: np.ndarray, layout: Layout) -> np.ndarray:
    """The layout's vegetation index thresholded by Otsu (ExG+Otsu or NDVI+Otsu)."""
    in_field = bands.max(axis=2) > BLACK_LEVEL
    return threshold_otsu(vegetation_index(bands, layout), in_field)


def difference_threshold(bands: np.ndarray) -> float | None:
    """Otsu's threshold of NIR - red over the in-field pixels of a strided sample; None when
    nothing is in field."""
    sample = strided_sample(bands)
    in_field = sample.max(axis=2) > BLACK_LEVEL
    return otsu_threshold(nir_red_difference(sample)[in_field]) if in_field.any() else None


def refine_by_difference(
    probability: np.ndarray, bands: np.ndarray, threshold: float, reach: int = 2, rows: int = 512
) -> None:
    """The network says where plants are, NIR - red draws their pixels (in place).

    Where NIR - red is at or below its Otsu threshold the probability becomes 0 (the soil a
    network's edges draw in); where it is above and within ``reach`` pixels of the network's
    mask (probability above ``threshold``), at least ``(1 + threshold) / 2`` (plant pixels
    the network missed beside its plants). Plants the index sees far from any the network
    found stay out: that is the network's share. In strips of ``rows`` (each seeing ``reach``
    rows of the network's mask above and below it), so a large image needs no full-size copy
    of anything: concurrent requests each hold a few strips.
    """
    cut = difference_threshold(bands)
    if cut is None:
        return
    floor = np.float32((1 + threshold) / 2)
    height = bands.shape[0]
    below = probability[: min(height, rows + reach)] > threshold  # the network's mask, read ahead
    for top in range(0, height, rows):
        start = max(0, top - reach)
        proposal = Image.fromarray(np.where(below, np.uint8(255), np.uint8(0)))
        near = np.asarray(proposal.filter(ImageFilter.MaxFilter(2 * reach + 1)))[top - start :][:rows] > 0
        after = top + rows  # read the next strip's mask before this strip's probabilities change
        below = probability[max(0, after - reach) : min(height, after + rows + reach)] > threshold
        strip = bands[top : top + rows]
        plant = nir_red_difference(strip, np.int16) > cut
        values = probability[top : top + rows]
        values[~plant] = 0.0
        confirmed = plant & near
        values[confirmed] = np.maximum(values[confirmed], floor)


def typical_leaf_width(mask: np.ndarray, max_depth: int = 64) -> float | None:
    """Typical width in pixels of the vegetation in a 0/255 mask, or None without any.

    Each vegetation pixel's depth is how many 4-neighbour erosions it survives (its distance
    to soil, in pixels). Across a strip of width w the depths run 1..w/2 and back, mean
    (w + 2) / 4: so the width is four times the mean depth, less 2. Pixels deeper than
    ``max_depth`` count as it.
    """
    inside = mask > 127
    if not inside.any():
        return None
    depth = np.zeros(mask.shape, np.int32)
    current = inside.copy()
    for _ in range(max_depth):
        if not current.any():
            break
        depth += current
        eroded = current.copy()
        eroded[1:] &= current[:-1]
        eroded[:-1] &= current[1:]
        eroded[:, 1:] &= current[:, :-1]
        eroded[:, :-1] &= current[:, 1:]
        eroded[0] = eroded[-1] = False
        eroded[:, 0] = eroded[:, -1] = False
        current = eroded
    return float(4.0 * depth[inside].mean() - 2.0)
