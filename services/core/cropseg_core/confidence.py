"""The model's own confidence on an image, summarised, and the IoU it implies -- no labels needed.

Per image the pipeline counts its pixels by predicted probability in :data:`BINS` bins, even in
logit space from -8 to 8 (fine where probabilities crowd near 0 and 1), separately for pixels
it calls soil and plant (:func:`confidence_counts`: 64 integers, sent in the ``X-Confidence``
header and kept in each prediction record). Read as calibrated probabilities -- a pixel at p is
vegetation with probability p -- they give the expected true positives, false positives and
false negatives, and so an expected IoU (:func:`estimated_iou`).

The network's probabilities are over-confident; a temperature T (each bin's logit divided by
T) calibrates them. ``cropseg-model profile`` fits T on the real selection splits and reports
how well the estimate tracked the measured IoU on the real validation splits; the reference
profile ships both, and the drift monitor estimates the IoU of recent uploads with it.
"""

from __future__ import annotations

import numpy as np

BINS = 32
LOGIT_EDGES = np.linspace(-8.0, 8.0, BINS + 1)
PROBABILITY_EDGES = 1.0 / (1.0 + np.exp(-LOGIT_EDGES))
LOGIT_CENTRES = (LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2
# Count about this many pixels at most: a strided sample of a large image estimates as well.
SAMPLE_PIXELS = 250_000
# Probability -> bin through a table over 16-bit levels: one gather per pixel instead of a
# binary search (a 360x480 image: ~1 ms instead of 14; the logit edges stay distinct levels).
_LEVELS = 65535
_BIN_OF_LEVEL = np.clip(
    np.searchsorted(PROBABILITY_EDGES, np.arange(_LEVELS + 1) / _LEVELS, side="right") - 1, 0, BINS - 1
).astype(np.int64)
MIN_UNION = 0.01


def confidence_counts(probability: np.ndarray, threshold: float) -> np.ndarray:
    """(2, BINS) pixel counts by probability bin: row 0 the pixels called soil, row 1 plant."""
    stride = max(1, int(np.ceil(np.sqrt(probability.size / SAMPLE_PIXELS))))
    sample = probability[::stride, ::stride]
    bins = _BIN_OF_LEVEL[(np.clip(sample, 0, 1) * _LEVELS + 0.5).astype(np.uint16)]
    bins[sample > threshold] += BINS
    return np.bincount(bins.ravel(), minlength=2 * BINS).reshape(2, BINS)


def estimated_iou(counts: np.ndarray, temperature: float = 1.0) -> float | None:
    """Expected IoU of the mask the counts describe, their probabilities calibrated by
    ``temperature``; None when predicted and expected vegetation together cover under
    MIN_UNION of the image (bare soil: IoU says nothing there)."""
    vegetation = 1.0 / (1.0 + np.exp(-LOGIT_CENTRES / temperature))
    soil, plant = np.asarray(counts, np.float64)
    hits = float(plant @ vegetation)
    union = float(plant.sum()) + float(soil @ vegetation)  # TP + FP + FN
    return hits / union if union >= MIN_UNION * (soil.sum() + plant.sum()) and union > 0 else None


def encode_counts(counts: np.ndarray) -> str:
    """``soil=1,2,...;plant=3,4,...``: the ``X-Confidence`` header."""
    soil, plant = (",".join(str(int(n)) for n in row) for row in counts)
    return f"soil={soil};plant={plant}"


def decode_counts(text: str) -> np.ndarray:
    """The counts of :func:`encode_counts`; ValueError when the text is not such counts."""
    parts = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    try:
        rows = [[int(n) for n in parts[name].split(",")] for name in ("soil", "plant")]
    except (KeyError, ValueError) as e:
        raise ValueError(f"not confidence counts: {text[:80]!r}") from e
    if any(len(row) != BINS or min(row) < 0 for row in rows):
        raise ValueError(f"confidence counts need {BINS} non-negative counts per row")
    return np.array(rows, np.int64)


def fit_temperature(counts: list[np.ndarray], measured: list[float]) -> float:
    """The temperature whose estimates come closest (least squares) to the measured IoUs."""
    candidates = np.round(np.arange(0.5, 4.0001, 0.05), 2)
    errors = []
    for temperature in candidates:
        estimates = [estimated_iou(c, float(temperature)) for c in counts]
        errors.append(sum((e - m) ** 2 for e, m in zip(estimates, measured, strict=True) if e is not None))
    return float(candidates[int(np.argmin(errors))])
