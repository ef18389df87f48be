import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cropseg_core.bands import LAYOUTS, from_model_bands
from cropseg_core.indices import excess_green, ndvi
from cropseg_model.synth import (
    SOILS,
    Leaf,
    Scene,
    generate_tile,
    leaf_polygon,
    render,
    write_dataset,
)


def one_leaf_scene() -> Scene:
    scene = Scene(height=60, width=80, soil="dry", soil_reflectance=np.array(SOILS["dry"]))
    scene.texture_strength = 0.0
    scene.leaves.append(Leaf(x=40, y=30, angle=0.3, length=25, width=10, roundness=0.4, bend=0.0, shade=1.0))
    scene.leaf_stress.append(0.0)
    return scene


@pytest.mark.slow
def test_same_seed_and_index_give_identical_tiles() -> None:
    first, encoded_a, _ = generate_tile(5, 3)
    second, encoded_b, _ = generate_tile(5, 3)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.mask, second.mask)
    assert encoded_a == encoded_b
    other, _, _ = generate_tile(5, 4)
    assert not np.array_equal(first.image, other.image)


def test_tile_shape_and_mask_values() -> None:
    tile, _, _ = generate_tile(1, 0, height=120, width=200)
    assert tile.image.shape == (120, 200, 4)  # red, green, blue, NIR
    assert tile.rgb.shape == (120, 200, 3)
    assert tile.image.dtype == np.uint8
    assert set(np.unique(tile.mask)) <= {0, 255}
    assert tile.meta["vegetation_fraction"] == pytest.approx((tile.mask > 0).mean(), abs=1e-5)


def test_known_scene_mask_is_exactly_the_drawn_leaf() -> None:
    scene = one_leaf_scene()
    _image, mask = render(scene)
    expected = np.zeros((60, 80), np.uint8)
    cv2.fillPoly(expected, [leaf_polygon(scene.leaves[0])], 255)
    np.testing.assert_array_equal(mask, expected)
    assert 100 < (mask > 0).sum() < 400


def test_leaves_are_green_in_rgb_and_red_in_colour_infrared() -> None:
    bands, mask = render(one_leaf_scene())
    leaf, soil = mask > 0, mask == 0
    exg = excess_green(bands[..., :3])
    assert exg[leaf].mean() > exg[soil].mean() + 0.1
    index = ndvi(bands)
    assert index[leaf].mean() > index[soil].mean() + 0.3
    cir = from_model_bands(bands, LAYOUTS["cir"])
    # CIR puts NIR in the first channel and red in the second: leaves are red-magenta.
    assert cir[leaf, 0].mean() > cir[leaf, 1].mean() * 2
    assert cir[leaf, 1].mean() < cir[soil, 1].mean()


def test_partial_out_of_field_region_is_exactly_black_in_image_and_mask() -> None:
    scene = one_leaf_scene()
    scene.black, scene.black_angle, scene.black_offset = "partial", 0.0, 0.5
    image, mask = render(scene)
    black = image.max(axis=2) == 0
    assert 0.3 < black.mean() < 0.7
    assert not mask[black].any()
    assert black[:, -1].all()
    assert not black[:, 0].any()


@pytest.mark.slow
def test_generated_sets_cover_the_promised_variety() -> None:
    metas = [generate_tile(9, i, height=90, width=120)[0].meta for i in range(120)]
    assert {m["layout"] for m in metas} == set(LAYOUTS)
    assert len({m["soil"] for m in metas}) >= 6
    assert {m["species"] for m in metas} == {"rosette", "grass", "broadleaf"}
    assert any(m["jpeg_quality"] for m in metas)
    assert any(m["jpeg_quality"] is None for m in metas)
    assert {"none", "partial"} <= {m["black"] for m in metas}
    fractions = [float(m["vegetation_fraction"]) for m in metas]
    assert min(fractions) < 0.05
    assert max(fractions) > 0.3


@pytest.mark.slow
def test_jpeg_tiles_carry_real_compression_artefacts() -> None:
    index = next(i for i in range(50) if generate_tile(3, i)[0].meta["jpeg_quality"] is not None)
    tile, encoded, ext = generate_tile(3, index)
    assert ext == "jpg"
    assert encoded[:3] == b"\xff\xd8\xff"
    decoded = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    np.testing.assert_array_equal(tile.rgb, decoded)  # the visible bands are what the JPEG holds


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_dataset_is_identical_whatever_the_number_of_workers(tmp_path: Path) -> None:
    write_dataset(tmp_path / "one", 6, seed=4, height=48, width=64, workers=1, progress=False)
    write_dataset(tmp_path / "two", 6, seed=4, height=48, width=64, workers=2, progress=False)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    meta = [json.loads(line) for line in (tmp_path / "one" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 6
    assert len(list((tmp_path / "one" / "masks").glob("*.png"))) == 6
    assert not list((tmp_path / "one").rglob("*.tmp"))


def test_leaf_polygon_points_towards_its_angle() -> None:
    leaf = Leaf(x=0, y=0, angle=math.pi / 2, length=20, width=4, roundness=0.5, bend=0, shade=1)
    polygon = leaf_polygon(leaf)
    assert polygon[:, 1].max() == pytest.approx(20, abs=1)  # +y is down the image
    assert abs(polygon[:, 0]).max() <= 3
