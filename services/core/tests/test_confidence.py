"""The confidence counts a segmentation carries and the label-free IoU estimate read from them."""

from __future__ import annotations

import numpy as np
import pytest

from cropseg_core.confidence import (
    BINS,
    SAMPLE_PIXELS,
    confidence_counts,
    decode_counts,
    encode_counts,
    estimated_iou,
    fit_temperature,
)


def probabilities(seed: int, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """A random truth and probabilities drawn so that p is calibrated at temperature ``sharpness``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (200, 200))
    truth = rng.random((200, 200)) < 1 / (1 + np.exp(-logits))
    return (1 / (1 + np.exp(-logits * sharpness))).astype(np.float32), truth


def test_counts_split_pixels_by_call_and_bin() -> None:
    probability = np.array([[0.01, 0.2, 0.6], [0.99, 0.5, 0.0]], np.float32)
    counts = confidence_counts(probability, 0.55)
    assert counts.shape == (2, BINS)
    assert counts[0].sum() == 4  # 0.01, 0.2, 0.5, 0.0 called soil
    assert counts[1].sum() == 2
    assert counts[0, 0] == 1  # p = 0 falls in the lowest bin; 0.99 (logit 4.6) in bin 25 of 32
    assert counts[1, 25] == 1


def test_a_large_image_is_sampled_not_counted_pixel_by_pixel() -> None:
    probability = np.full((3000, 3000), 0.9, np.float32)
    counts = confidence_counts(probability, 0.5)
    assert 0.25 * SAMPLE_PIXELS < counts.sum() <= SAMPLE_PIXELS


def test_calibrated_probabilities_estimate_the_true_iou() -> None:
    probability, truth = probabilities(1, 1.0)
    mask = probability > 0.5
    true_iou = (mask & truth).sum() / (mask | truth).sum()
    assert estimated_iou(confidence_counts(probability, 0.5)) == pytest.approx(true_iou, abs=0.02)


def test_the_temperature_undoes_over_confidence() -> None:
    """Probabilities twice as sure as they should be: the raw estimate is too high, T = 2 fits."""
    counts, measured = [], []
    for seed in range(4):
        probability, truth = probabilities(seed, 2.0)
        mask = probability > 0.5
        counts.append(confidence_counts(probability, 0.5))
        measured.append(float((mask & truth).sum() / (mask | truth).sum()))
    raw = estimated_iou(counts[0])
    assert raw is not None
    assert raw > measured[0] + 0.05
    temperature = fit_temperature(counts, measured)
    assert temperature == pytest.approx(2.0, abs=0.25)
    assert estimated_iou(counts[0], temperature) == pytest.approx(measured[0], abs=0.03)


def test_no_vegetation_anywhere_has_no_estimate() -> None:
    assert estimated_iou(confidence_counts(np.zeros((10, 10), np.float32), 0.5)) is None


def test_the_header_round_trips_and_rejects_what_is_not_counts() -> None:
    counts = confidence_counts(probabilities(3, 1.0)[0], 0.5)
    text = encode_counts(counts)
    assert (text.startswith("soil="), ";plant=" in text) == (True, True)
    np.testing.assert_array_equal(decode_counts(text), counts)
    for bad in ("", "soil=1,2;plant=3", "soil=" + ",".join(["x"] * BINS) + ";plant=0", "plant=1"):
        with pytest.raises(ValueError, match="counts"):
            decode_counts(bad)
