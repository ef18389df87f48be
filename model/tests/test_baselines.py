import numpy as np
import pytest

from cropseg_core.bands import LAYOUTS
from cropseg_core.indices import excess_green, otsu_threshold, typical_leaf_width
from cropseg_core.masks import score
from cropseg_model.baselines import baselines_for, difference_otsu, exg_otsu, green_kmeans, kmeans, ndvi_otsu

from .conftest import disc_image


@pytest.mark.parametrize("method", [exg_otsu, green_kmeans], ids=["exg_otsu", "green_kmeans"])
def test_baselines_find_a_green_disc_on_soil(method) -> None:  # type: ignore[no-untyped-def]
    image, truth = disc_image()
    assert score(method(image), truth).iou == 1.0


@pytest.mark.parametrize("method", [exg_otsu, green_kmeans], ids=["exg_otsu", "green_kmeans"])
def test_black_pixels_are_never_vegetation(method) -> None:  # type: ignore[no-untyped-def]
    image, truth = disc_image()
    image[:, :20] = 0
    truth[:, :20] = 0
    assert method(image)[:, :20].max() == 0
    assert method(np.zeros((8, 8, 3), np.uint8)).max() == 0


def test_excess_green_of_pure_colours() -> None:
    pixels = np.array([[[0, 255, 0], [255, 0, 0], [100, 100, 100], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(excess_green(pixels)[0], [2.0, -1.0, 0.0, 0.0], atol=1e-6)


def test_otsu_splits_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.0, 0.05, 1000), rng.normal(1.0, 0.05, 300)])
    assert 0.3 < otsu_threshold(values) < 0.7
    assert otsu_threshold(np.full(5, 0.25)) == 0.25


def test_kmeans_recovers_two_clusters() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(3, 0.1, (70, 2))])
    labels, centres = kmeans(points)
    assert sorted(np.bincount(labels).tolist()) == [50, 70]
    np.testing.assert_allclose(sorted(centres[:, 0]), [0, 3], atol=0.1)


def test_ndvi_otsu_finds_a_leaf_bright_in_nir() -> None:
    _, truth = disc_image()
    bands = np.zeros((*truth.shape, 4), np.uint8)
    bands[..., 0] = np.where(truth > 0, 30, 120)  # leaves absorb red
    bands[..., 3] = np.where(truth > 0, 200, 130)  # and reflect near-infrared
    assert score(ndvi_otsu(bands), truth).iou == 1.0


def test_difference_otsu_keeps_dark_soil_out_where_ndvi_lets_it_in() -> None:
    """Dark soil, where NIR and red are both small, has a high NDVI but a small NIR - red."""
    _, truth = disc_image()
    bands = np.zeros((*truth.shape, 4), np.uint8)
    bands[..., 0] = np.where(truth > 0, 40, 60)
    bands[..., 3] = np.where(truth > 0, 200, 120)
    bands[:8, :, 0], bands[:8, :, 3] = 3, 9  # a dark strip of soil: NDVI 0.5, NIR - red 6
    assert score(difference_otsu(bands), truth).iou == 1.0
    assert score(ndvi_otsu(bands), truth).iou < 1.0


def test_each_layout_gets_the_baselines_its_bands_allow() -> None:
    assert set(baselines_for(LAYOUTS["rgb"])) == {"exg_otsu", "green_kmeans"}
    assert set(baselines_for(LAYOUTS["cir"])) == {"ndvi_otsu", "difference_otsu"}
    assert set(baselines_for(LAYOUTS["rgbn"])) == {"exg_otsu", "green_kmeans", "ndvi_otsu", "difference_otsu"}
    assert set(baselines_for(LAYOUTS["red_nir"])) == {"ndvi_otsu", "difference_otsu"}


@pytest.mark.parametrize("width", [4, 10, 24])
def test_typical_leaf_width_of_strips(width: int) -> None:
    mask = np.zeros((200, 200), np.uint8)
    for left in range(10, 190 - width, width + 20):
        mask[10:190, left : left + width] = 255
    assert typical_leaf_width(mask) == pytest.approx(width, rel=0.2)
    assert typical_leaf_width(np.zeros((5, 5), np.uint8)) is None
