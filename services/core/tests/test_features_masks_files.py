import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cropseg_core.features import PROPERTY_NAMES, image_features, jpeg_blockiness
from cropseg_core.files import write_atomic, write_json, written_beside
from cropseg_core.imaging import decode_image
from cropseg_core.masks import encode_png, overlay, vegetation_fraction


def prop(image: np.ndarray, name: str) -> float:
    return float(image_features(image)[1][PROPERTY_NAMES.index(name)])


def test_grey_histogram_counts_luma_fractions() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = 255
    histogram = image_features(image)[0]
    assert histogram.shape == (256,)
    assert histogram[0] == pytest.approx(0.75)
    assert histogram[255] == pytest.approx(0.25)


def test_properties_of_a_constructed_image() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :5] = (200, 100, 100)  # in field; right half is black (out of field)
    assert prop(image, "black_fraction") == pytest.approx(0.5)
    expected_luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 100) / 255  # luma in 256 levels
    assert prop(image, "brightness") == pytest.approx(expected_luma, rel=1e-5)
    assert prop(image, "rms_contrast") == pytest.approx(0.0, abs=1e-6)
    assert prop(image, "red_relative_intensity") == pytest.approx(0.5)
    assert prop(image, "green_relative_intensity") == pytest.approx(0.25)


def test_brightening_raises_brightness_and_blurring_lowers_sharpness() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(30, 200, (40, 40, 3), dtype=np.uint8)
    brighter = np.clip(image.astype(int) + 40, 0, 255).astype(np.uint8)
    assert prop(brighter, "brightness") > prop(image, "brightness") + 0.1
    blurred = ((image[:-1, :-1].astype(int) + image[1:, 1:] + image[:-1, 1:] + image[1:, :-1]) // 4).astype(
        np.uint8
    )
    assert prop(blurred, "sharpness") < prop(image, "sharpness") / 2


def test_properties_match_their_plain_definitions_on_a_partly_black_tile() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image[:, :12] = 0  # out of field
    # BT.601 luma in 256 levels, as OpenCV computes it in 14-bit fixed point
    grey = ((image.astype(np.int64) @ np.array([4899, 9617, 1868]) + 8192) >> 14).astype(np.float64)
    field = image.max(axis=2) > 2
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    channels = image[field].astype(np.float64).sum(axis=0)
    steps_x, steps_y = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    across = np.arange(steps_x.shape[1]) % 8 == 7  # the step from column 8k+7 to 8k+8
    down = np.arange(steps_y.shape[0]) % 8 == 7
    block_ratio = (steps_x[:, across].mean() + steps_y[down].mean()) / (
        steps_x[:, ~across].mean() + steps_y[~down].mean()
    )
    expected = [
        grey[field].mean() / 255,
        grey[field].std() / 255,
        *(channels / channels.sum()),
        laplacian[field[1:-1, 1:-1]].var() / 255**2,
        1 - field.mean(),
        (image.max(axis=2) >= 250).sum() / field.sum(),
        max(0.0, block_ratio - 1.15),
        laplacian[field[1:-1, 1:-1]].std() / grey[field].std(),
    ]
    np.testing.assert_allclose(
        image_features(image)[1], expected, rtol=2e-4
    )  # OpenCV rounds a few pixels' luma otherwise


def test_all_black_tile_has_neutral_properties() -> None:
    values = image_features(np.zeros((4, 4, 3), np.uint8))[1]
    assert values[PROPERTY_NAMES.index("black_fraction")] == 1.0
    assert values[PROPERTY_NAMES.index("brightness")] == 0.0


def test_png_round_trip_and_overlay() -> None:
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 2] = 255
    np.testing.assert_array_equal(decode_image(encode_png(mask)).pixels[..., 0], mask)
    image = np.full((3, 4, 3), 100, np.uint8)
    tinted = overlay(image, mask)
    assert tinted[0, 0].tolist() == [100, 100, 100]
    assert tinted[1, 2, 0] > 100
    assert tinted[1, 2, 1] < 100
    assert vegetation_fraction(mask) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(mask.astype(np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, mask[:2])


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text().startswith('{\n  "a"')
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["report.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):  # the write fails half-way: not bytes
        write_atomic(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    write_atomic(target, b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_file_written_beside_by_name_replaces_the_old_one_only_when_whole(tmp_path: Path) -> None:
    target = tmp_path / "out" / "cover.gpkg"
    with written_beside(target) as temporary:
        assert temporary.name == "cover.gpkg"
        assert temporary.parent.parent == target.parent
        temporary.write_bytes(b"first")
        (temporary.parent / "cover.gpkg-journal").write_bytes(b"a driver's own file")
        assert not target.exists()
    assert target.read_bytes() == b"first"

    def fail_half_way() -> None:
        with written_beside(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("the driver failed")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert target.read_bytes() == b"first"
    assert os.listdir(target.parent) == ["cover.gpkg"]


def test_heavy_jpeg_shows_its_blocks_an_ordinary_one_does_not() -> None:
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3)).astype(np.uint8), (0, 0), 2)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)

    def blockiness(quality: int | None) -> float:
        if quality is None:
            return jpeg_blockiness(cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY))
        buffer = io.BytesIO()
        Image.fromarray(texture).save(buffer, "JPEG", quality=quality)
        return jpeg_blockiness(cv2.cvtColor(np.asarray(Image.open(buffer)), cv2.COLOR_RGB2GRAY))

    assert blockiness(None) == blockiness(92) == 0.0  # lossless or a camera's JPEG: nothing to see
    assert blockiness(30) > 0.2
