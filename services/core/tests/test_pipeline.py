"""The core segmentation pipeline and band layouts, with a stand-in model (the real one is
tested through every service that runs the pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

from cropseg_core.bands import (
    LAYOUTS,
    ChannelCountError,
    LayoutError,
    display_rgb,
    from_model_bands,
    get_layout,
    to_model_bands,
)
from cropseg_core.pipeline import MIN_SCALE, Pipeline, PipelineConfig, ScaleError, working_scale


def leaves(size: int, leaf: int, height: int | None = None) -> np.ndarray:
    """Bands (red, green, blue, NIR) of brown soil with long green leaves ``leaf`` px wide."""
    height = height or size
    bands = np.zeros((height, size, 4), np.uint8)
    bands[:] = (120, 90, 60, 100)
    for y in range(leaf, height - 8 * leaf, 10 * leaf):
        for x in range(leaf, size - leaf, 3 * leaf):
            bands[y : y + 8 * leaf, x : x + leaf] = (40, 150, 40, 220)
    return bands


def green_model(tile: np.ndarray) -> np.ndarray:
    """Stand-in for the network: probability 1 where green dominates, else 0."""
    return (tile[..., 1].astype(int) > tile[..., 0].astype(int) + 40).astype(np.float32)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_layout_round_trips_its_bands(name: str) -> None:
    layout = LAYOUTS[name]
    bands = np.random.default_rng(0).integers(1, 256, (5, 7, 4), dtype=np.uint8)
    kept = bands * np.array(layout.present(), np.uint8)
    np.testing.assert_array_equal(to_model_bands(from_model_bands(kept, layout), layout), kept)
    assert display_rgb(kept, layout).shape == (5, 7, 3)


def test_cir_channels_are_read_as_nir_red_green() -> None:
    cir = np.array([[[200, 30, 90]]], np.uint8)  # NIR, red, green
    assert to_model_bands(cir, get_layout("cir")).tolist() == [[[30, 90, 0, 200]]]
    assert to_model_bands(cir, get_layout("rgb")).tolist() == [[[200, 30, 90, 0]]]


def test_grey_and_alpha_in_true_colour() -> None:
    grey = np.full((2, 2, 1), 80, np.uint8)
    assert to_model_bands(grey, get_layout("rgb"))[0, 0].tolist() == [80, 80, 80, 0]
    rgba = np.array([[[100, 200, 50, 0], [100, 200, 50, 255]]], np.uint8)
    assert to_model_bands(rgba, get_layout("rgb"))[0].tolist() == [[0, 0, 0, 0], [100, 200, 50, 0]]


def test_unknown_layouts_and_wrong_channel_counts_say_what_to_send() -> None:
    with pytest.raises(LayoutError, match="use one of rgb, cir, rgbn, nir_red, red_nir"):
        get_layout("hsv")
    with pytest.raises(ChannelCountError, match="needs 4 channels, but the image has 3"):
        to_model_bands(np.zeros((2, 2, 3), np.uint8), get_layout("rgbn"))
    assert ChannelCountError.status_code == LayoutError.status_code == 422
    assert get_layout(None).name == "rgb"
    assert get_layout(" CIR ").name == "cir"


def test_explicit_scale_and_gsd() -> None:
    config, bands, rgb = PipelineConfig(model_gsd_mm=1.0), leaves(64, 4), get_layout("rgb")
    assert working_scale(bands, rgb, config, scale=0.5) == 0.5
    assert working_scale(bands, rgb, config, gsd_mm=0.25) == 0.25
    assert working_scale(bands, rgb, config, gsd_mm=3.0) == 1.0  # coarser than the model's: never enlarged
    assert working_scale(bands, rgb, config, gsd_mm=0.01) == MIN_SCALE
    for kwargs, message in (({"scale": 0}, "scale must be"), ({"scale": 1.5}, "scale must be"),
                            ({"gsd_mm": 0}, "gsd_mm must be"), ({"gsd_mm": 2000}, "gsd_mm must be"),
                            ({"gsd_mm": 1, "scale": 0.5}, "not both")):  # fmt: skip
        with pytest.raises(ScaleError, match=message):
            working_scale(bands, rgb, config, **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_automatic_scale_shrinks_wide_leaves_but_never_below_one_tile() -> None:
    config, rgb = PipelineConfig(tile_size=512, auto_leaf_px=16), get_layout("rgb")
    assert working_scale(leaves(400, 6), rgb, config) == 1.0  # narrow leaves: full resolution
    assert working_scale(leaves(2048, 64), rgb, config) == pytest.approx(16 / 64, rel=0.15)
    assert working_scale(leaves(1024, 100), rgb, config) == 0.5  # floor: 512 px on the long side
    soil = np.zeros((1024, 1024, 4), np.uint8)
    soil[:] = (120, 90, 60, 0)
    soil[::2, ::2, 1] = 95  # texture only: the index mask cannot be trusted, keep full size
    assert working_scale(soil, rgb, config) == 1.0
    assert working_scale(leaves(2048, 64), rgb, PipelineConfig(auto_leaf_px=0)) == 1.0


def test_run_returns_a_full_size_mask_from_the_working_resolution() -> None:
    image = from_model_bands(leaves(1500, 48, height=1100), get_layout("rgb"))
    seen: list[tuple[int, ...]] = []

    def model(tile: np.ndarray) -> np.ndarray:
        seen.append(tile.shape)
        return green_model(tile)

    result = Pipeline(PipelineConfig(auto_leaf_px=16)).run(model, image, 0.5, "rgb")
    assert result.mask.shape == result.probability.shape == (1100, 1500)
    assert result.scale < 1
    assert result.layout == "rgb"
    assert max(max(shape[:2]) for shape in seen) <= 512
    truth = green_model(image) > 0.5
    assert ((result.mask > 127) == truth).mean() > 0.97
    assert set(result.timings) == {"preprocess", "infer", "postprocess"}


def widen(plants: np.ndarray) -> np.ndarray:
    """A network that draws plants too wide: each plant pixel's 2 px neighbourhood."""
    out = plants.copy()
    for dy in (-2, 0, 2):
        for dx in (-2, 0, 2):
            out = np.maximum(out, np.roll(plants, (dy, dx), axis=(0, 1)))
    return out


@pytest.mark.parametrize("layout", ["rgbn", "red_nir", "cir"])
def test_nir_layouts_are_drawn_by_the_difference_index_where_the_network_sees_plants(layout: str) -> None:
    """The network says where plants are, NIR - red draws them: the soil its edges drew in goes,
    the plant pixels it missed beside its plants come in, plants it never saw stay out."""
    bands = leaves(200, 6)
    truth = green_model(bands) > 0.5
    sensor = get_layout(layout)
    image = from_model_bands(bands * np.array(sensor.present(), np.uint8), sensor)
    seen = np.zeros(truth.shape, bool)
    seen[:, :90] = True  # this network finds only the plants on the left (no leaf crosses x = 90)

    def model(tile: np.ndarray) -> np.ndarray:
        plants = (tile[..., 3] > 150) & seen
        too_wide = widen(plants.astype(np.float32))  # edges 2 px too wide
        too_wide[::3] = np.minimum(too_wide[::3], 0.4)  # and every third row under the threshold
        return too_wide

    refined = Pipeline(PipelineConfig(auto_leaf_px=0)).run(model, image, 0.5, sensor).mask > 127
    alone = Pipeline(PipelineConfig(auto_leaf_px=0, refine_by_index=False)).run(model, image, 0.5, sensor)
    assert ((alone.mask > 127) != (truth & seen)).sum() > 0.2 * (truth & seen).sum()
    assert (refined == (truth & seen)).all()


def test_true_colour_is_not_refined() -> None:
    image = from_model_bands(leaves(200, 6), get_layout("rgb"))

    def model(tile: np.ndarray) -> np.ndarray:
        return widen(green_model(tile))

    result = Pipeline(PipelineConfig(auto_leaf_px=0)).run(model, image, 0.5, "rgb")
    assert (result.mask > 127).sum() > 1.5 * (green_model(image) > 0.5).sum()


@pytest.mark.parametrize("rows", [1, 3, 7, 512])
def test_the_refinement_in_strips_equals_it_over_the_whole_image(rows: int) -> None:
    """Strips (which keep concurrent requests' memory small) see their neighbours' mask rows."""
    from PIL import Image, ImageFilter

    from cropseg_core.indices import difference_threshold, nir_red_difference, refine_by_difference

    rng = np.random.default_rng(0)
    bands = rng.integers(0, 255, (23, 31, 4), dtype=np.uint8)
    probability = rng.random((23, 31)).astype(np.float32)
    expected = probability.copy()
    mask = Image.fromarray(np.where(expected > 0.5, np.uint8(255), np.uint8(0)))
    near = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) > 0
    plant = nir_red_difference(bands, np.int16) > difference_threshold(bands)
    expected[~plant] = 0
    expected[plant & near] = np.maximum(expected[plant & near], np.float32(0.75))
    refine_by_difference(probability, bands, 0.5, rows=rows)
    assert np.array_equal(probability, expected)
