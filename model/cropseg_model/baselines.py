"""The simple methods the model must beat, vectorised, on images in the model's bands.

* **ExG + Otsu**: excess green ``2g - r - b`` on chromaticity coordinates, thresholded per
  image by Otsu's method: what QGIS, OpenDroneMap or Pix4Dfields offer for true colour.
* **NDVI + Otsu**: the same on NDVI = (NIR - R) / (NIR + R), for every layout with a
  near-infrared band; **(NIR - R) + Otsu** on the plain difference, which on dark soil
  often beats NDVI.
* **Green filter + k-means**: pixels whose green channel dominates are candidates; k-means
  with k = 2 on (excess green, excess red) splits them into vegetation and the rest. The
  seed used this to make pseudo-labels; here it runs in a handful of numpy passes instead
  of a Python loop over pixels.

Each returns a uint8 mask (255 = vegetation) and treats black out-of-field pixels as soil.
The indices and Otsu's method live in :mod:`cropseg_core.indices` (the pipeline uses them
too); :func:`baselines_for` says which apply to a layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cropseg_core.bands import Layout
from cropseg_core.indices import chromaticity, excess_green, ndvi, nir_red_difference, threshold_otsu
from cropseg_core.masks import BLACK_LEVEL

Baseline = Callable[[np.ndarray], np.ndarray]


def exg_otsu(bands: np.ndarray) -> np.ndarray:
    """Excess green thresholded with Otsu over the in-field pixels (true colour)."""
    return threshold_otsu(excess_green(bands[..., :3]), bands[..., :3].max(axis=2) > BLACK_LEVEL)


def ndvi_otsu(bands: np.ndarray) -> np.ndarray:
    """NDVI thresholded with Otsu over the in-field pixels (needs NIR and red)."""
    return threshold_otsu(ndvi(bands), bands.max(axis=2) > BLACK_LEVEL)


def difference_otsu(bands: np.ndarray) -> np.ndarray:
    """NIR - red thresholded with Otsu over the in-field pixels (needs NIR and red)."""
    return threshold_otsu(nir_red_difference(bands), bands.max(axis=2) > BLACK_LEVEL)


def kmeans(points: np.ndarray, k: int = 2, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means, deterministic (centres start at quantiles of the first feature)."""
    order = np.argsort(points[:, 0])
    centres = points[order[((np.arange(k) + 0.5) / k * len(points)).astype(int)]].astype(np.float64)
    labels = np.zeros(len(points), np.int64)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        updated = np.array(
            [points[labels == j].mean(axis=0) if (labels == j).any() else centres[j] for j in range(k)]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    return labels, centres


def green_kmeans(bands: np.ndarray) -> np.ndarray:
    """Green filter, then k-means (k = 2) on excess green and excess red of the candidates."""
    image = bands[..., :3]
    c = chromaticity(image)
    in_field = image.max(axis=2) > BLACK_LEVEL
    green = in_field & (c[..., 1] > c[..., 0]) & (c[..., 1] > c[..., 2])
    mask = np.zeros(image.shape[:2], np.uint8)
    if green.sum() < 2:
        return mask
    exg = 2 * c[..., 1] - c[..., 0] - c[..., 2]
    exr = 1.4 * c[..., 0] - c[..., 1]
    points = np.stack([exg[in_field], exr[in_field]], axis=1)
    labels, centres = kmeans(points)
    vegetation_cluster = int(np.argmax(centres[:, 0] - centres[:, 1]))
    clustered = np.zeros(image.shape[:2], bool)
    clustered[in_field] = labels == vegetation_cluster
    mask[clustered & green] = 255
    return mask


BASELINES: dict[str, Baseline] = {
    "exg_otsu": exg_otsu,
    "ndvi_otsu": ndvi_otsu,
    "difference_otsu": difference_otsu,
    "green_kmeans": green_kmeans,
}


def baselines_for(layout: Layout) -> dict[str, Baseline]:
    """The baselines a layout's bands allow: ExG and k-means need red, green and blue; NDVI
    and the difference need NIR and red."""
    names = []
    if all(layout.present()[:3]):
        names += ["exg_otsu", "green_kmeans"]
    if layout.has("nir") and layout.has("red"):
        names += ["ndvi_otsu", "difference_otsu"]
    return {name: BASELINES[name] for name in names}
