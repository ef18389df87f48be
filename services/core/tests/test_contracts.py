"""The inference -> storage header contract: written once, read back the same."""

from __future__ import annotations

import numpy as np
import pytest

from cropseg_core.confidence import BINS
from cropseg_core.contracts import Header, SegmentationHeaders


def answer(confidence: np.ndarray | None = None) -> SegmentationHeaders:
    return SegmentationHeaders(
        vegetation_fraction=0.421875,
        image_width=480,
        image_height=360,
        threshold=0.55,
        tiles=4,
        layout="cir",
        working_scale=0.5,
        model_name="cropseg-unet",
        model_version="2.0.0",
        confidence=confidence,
    )


def test_the_headers_are_spelled_as_inference_has_always_sent_them() -> None:
    counts = np.arange(2 * BINS).reshape(2, BINS)
    headers = answer(counts).to_headers()
    assert headers == {
        "X-Vegetation-Fraction": "0.421875",
        "X-Image-Width": "480",
        "X-Image-Height": "360",
        "X-Threshold": "0.55",
        "X-Tiles": "4",
        "X-Layout": "cir",
        "X-Working-Scale": "0.5",
        "X-Model-Name": "cropseg-unet",
        "X-Model-Version": "2.0.0",
        "X-Confidence": headers[Header.CONFIDENCE],
    }
    assert headers[Header.CONFIDENCE].startswith("soil=0,1,2,")


@pytest.mark.parametrize("with_confidence", [True, False], ids=["confidence", "no-confidence"])
def test_the_headers_round_trip(with_confidence: bool) -> None:
    counts = np.arange(2 * BINS).reshape(2, BINS) if with_confidence else None
    sent = answer(counts)
    lowered = {name.lower(): value for name, value in sent.to_headers().items()}  # as HTTP clients give them
    received = SegmentationHeaders.from_headers(lowered)
    assert received.to_headers() == sent.to_headers()
    assert (received.vegetation_fraction, received.tiles, received.working_scale) == (0.421875, 4, 0.5)
    if counts is None:
        assert received.confidence is None
    else:
        assert received.confidence is not None
        np.testing.assert_array_equal(received.confidence, counts)


def test_a_missing_or_malformed_header_is_named() -> None:
    headers = answer().to_headers()
    del headers[Header.LAYOUT]
    with pytest.raises(ValueError, match="no X-Layout header"):
        SegmentationHeaders.from_headers(headers)
    headers = {**answer().to_headers(), Header.TILES: "four"}
    with pytest.raises(ValueError, match="malformed X-Tiles header"):
        SegmentationHeaders.from_headers(headers)
    with pytest.raises(ValueError, match="confidence"):
        SegmentationHeaders.from_headers({**answer().to_headers(), Header.CONFIDENCE: "soil=1;plant=2"})
