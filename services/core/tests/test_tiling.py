from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_core.pipeline import PipelineConfig
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_core.tiling import plan_axis, plan_tiles, stitch

MODEL = Path(__file__).resolve().parents[3] / "model" / "artifacts" / "cropseg-unet.onnx"


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(100, 512, 96), (512, 512, 96), (513, 512, 96), (1000, 512, 96), (4000, 512, 96), (3000, 256, 0)],
    ids=["smaller", "exact", "one-more", "two-tiles", "drone-width", "no-overlap"],
)
def test_every_pixel_is_kept_from_exactly_one_tile(length: int, tile: int, overlap: int) -> None:
    size, spans = plan_axis(length, tile, overlap)
    assert size == min(length, tile)
    kept = np.zeros(length, int)
    for span in spans:
        assert span.start >= 0
        assert span.start + size <= length  # every tile is whole
        assert span.start <= span.keep_from < span.keep_to <= span.start + size
        kept[span.keep_from : span.keep_to] += 1
    assert (kept == 1).all()


def test_seams_leave_half_the_overlap_of_context_on_both_sides() -> None:
    _, spans = plan_axis(4000, 512, 96)
    for left, right in pairwise(spans):
        seam = left.keep_to
        assert seam == right.keep_from
        assert seam - right.start >= 48
        assert left.start + 512 - seam >= 48


def test_tiles_share_one_shape_and_stitch_back() -> None:
    image = np.arange(1100 * 1300, dtype=np.float32).reshape(1100, 1300)
    tiles = plan_tiles(1100, 1300, 512, 96)
    assert {(t.height, t.width) for t in tiles} == {(512, 512)}
    assert np.array_equal(stitch([t.read(image) for t in tiles], tiles, 1100, 1300), image)


def periodic_field(height: int, width: int, period: int = 64) -> np.ndarray:
    """Soil with leaves, repeated every ``period`` pixels: any window of a multiple of the
    period has the same statistics, so the model's per-image standardisation agrees
    between a tile and the whole image, and the tiled result can equal the single pass."""
    rng = np.random.default_rng(5)
    block = np.empty((period, period, 3), np.uint8)
    block[:] = rng.integers(80, 140, (period, period, 1)) * np.array([1.0, 0.8, 0.55])
    yy, xx = np.mgrid[0:period, 0:period]
    for cy, cx, r in ((16, 20, 9), (44, 40, 12), (50, 10, 6)):
        leaf = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        block[leaf] = np.stack([rng.integers(30, 70, leaf.sum()), rng.integers(110, 170, leaf.sum()),
                                rng.integers(30, 60, leaf.sum())], axis=1)  # fmt: skip
    return to_model_bands(np.tile(block, (height // period, width // period, 1)), get_layout("rgb"))


def predict_tiled(segmenter: OnnxSegmenter, image: np.ndarray, tile_size: int, overlap: int) -> np.ndarray:
    tiles = plan_tiles(*image.shape[:2], tile_size, overlap)
    predictions = [segmenter.predict(np.ascontiguousarray(t.read(image))) for t in tiles]
    return stitch(predictions, tiles, *image.shape[:2])


# The EfficientNet encoder's context reaches far past half the default 128 px overlap, and
# each tile standardises its own bands: measured on this image with cropseg-unet 2.0.0, a
# stitched probability differs from one pass by 0.034 at the 99.9th percentile (0.15 at the
# worst pixel) and the mask on 0.016 % of pixels; 256 px would halve that at 1.6x the cost
# for large images, and without overlap it is 0.072 and 0.044 %. The masks, not the last
# decimals, are what users get.
ATOL = 0.05  # on the 99.9th percentile of the probability difference
MAX_MASK_CHANGE = 3e-4  # share of mask pixels that may differ


@pytest.mark.slow
def test_stitched_mask_equals_single_pass_where_both_are_possible() -> None:
    config = PipelineConfig()
    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    image = periodic_field(1024, 1152)
    single = segmenter.predict(image)
    assert len(plan_tiles(1024, 1152, config.tile_size, config.tile_overlap)) == 9
    stitched = predict_tiled(segmenter, image, config.tile_size, config.tile_overlap)
    assert np.percentile(np.abs(stitched - single), 99.9) < ATOL
    threshold = segmenter.info.threshold if segmenter.info else 0.5
    assert 0.05 < (single > threshold).mean() < 0.95  # the image has both classes
    assert ((stitched > threshold) != (single > threshold)).mean() < MAX_MASK_CHANGE


@pytest.mark.slow
def test_tiles_without_enough_overlap_show_seams() -> None:
    """The check above can fail: with no overlap, tile borders change the prediction."""
    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    image = periodic_field(1024, 1024)
    stitched = predict_tiled(segmenter, image, 512, 0)
    assert np.percentile(np.abs(stitched - segmenter.predict(image)), 99.9) > ATOL


def test_session_options_reach_onnx_runtime_and_do_not_change_the_answer() -> None:
    tile = periodic_field(96, 128)
    default = OnnxSegmenter(MODEL)
    default.load()
    tuned = OnnxSegmenter(MODEL, intra_op_threads=1, graph_optimization="basic", thread_spinning=False)
    tuned.load()
    assert tuned._session is not None
    options = tuned._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    np.testing.assert_allclose(tuned.predict(tile), default.predict(tile), atol=1e-4)
