"""The seed's traditional techniques, vectorised.

* **ExG + Otsu**: excess green ``2g - r - b`` on chromaticity coordinates, thresholded per
  image by Otsu's method (maximum between-class variance of a 256-bin histogram).
* **Green filter + k-means**: pixels whose green channel dominates are candidates; k-means
  with k = 2 on (excess green, excess red) splits them into vegetation and the rest. The
  seed used this to make pseudo-labels; here it runs in a handful of numpy passes instead
  of a Python loop over pixels.

Both return uint8 masks (255 = vegetation) and treat black out-of-field pixels as soil.
Both assume true-colour RGB: on colour-infrared composites leaves are not green, which is
one reason the U-Net exists.
"""

from __future__ import annotations

import numpy as np

BLACK_LEVEL = 2


def chromaticity(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 r, g, b with r + g + b = 1 (0 on black)."""
    rgb = image.astype(np.float32)
    total = rgb.sum(axis=2, keepdims=True)
    return np.divide(rgb, total, out=np.zeros_like(rgb), where=total > 0)


def excess_green(image: np.ndarray) -> np.ndarray:
    c = chromaticity(image)
    return 2 * c[..., 1] - c[..., 0] - c[..., 2]


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


def exg_otsu(image: np.ndarray) -> np.ndarray:
    """Excess green thresholded with Otsu over the in-field pixels."""
    in_field = image.max(axis=2) > BLACK_LEVEL
    mask = np.zeros(image.shape[:2], np.uint8)
    if not in_field.any():
        return mask
    exg = excess_green(image)
    threshold = otsu_threshold(exg[in_field])
    mask[(exg > threshold) & in_field] = 255
    return mask


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


def green_kmeans(image: np.ndarray) -> np.ndarray:
    """Green filter, then k-means (k = 2) on excess green and excess red of the candidates."""
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


BASELINES = {"exg_otsu": exg_otsu, "green_kmeans": green_kmeans}
