from pathlib import Path

import cv2
import numpy as np
import pytest

from cropseg_core.masks import IGNORE, encode_png
from cropseg_model.datasets import DatasetError, discover, iter_pairs, load_masked


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels))


def test_paired_layout_reads_images_and_masks(tiny_dataset: Path) -> None:
    pairs = list(iter_pairs(tiny_dataset))
    assert len(pairs) == 8
    name, image, mask = pairs[0]
    assert name == "tile_11_000000"
    assert image.shape == (96, 128, 4)  # four-band tiles: red, green, blue, NIR
    assert mask.shape == (96, 128)
    assert set(np.unique(mask)) <= {0, 255}


def test_paired_layout_keeps_ignore_pixels(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[0] = 255
    mask[1] = IGNORE
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8) + 50)
    write_png(tmp_path / "masks" / "a.png", mask)
    _, loaded = load_masked(discover(tmp_path)[0])
    np.testing.assert_array_equal(loaded, mask)


def test_missing_mask_says_which_file(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "lonely.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"lonely\.png has no mask"):
        discover(tmp_path)
    assert discover(tmp_path, require_masks=False)[0].mask_path is None


def test_mask_of_wrong_size_is_rejected(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "masks" / "a.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DatasetError, match="mask is 4x5 but its image is 4x4"):
        load_masked(discover(tmp_path)[0])


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    write_png(tmp_path / "masks" / "bad.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"bad\.png: the data starts like a PNG"):
        load_masked(discover(tmp_path)[0])


def test_weedmap_layout_merges_crop_and_weed(tmp_path: Path) -> None:
    field = tmp_path / "Tiles" / "RedEdge" / "003"
    image = np.full((6, 8, 3), 90, np.uint8)
    label = np.zeros((6, 8, 3), np.uint8)
    label[0, 0] = (0, 255, 0)  # crop
    label[5, 7] = (255, 0, 0)  # weed
    write_png(field / "tile" / "RGB" / "frame0001.png", image)
    write_png(field / "groundtruth" / "003_frame0001_GroundTruth_color.png", label)
    write_png(field / "groundtruth" / "003_frame0001_GroundTruth_iMap.png", label[..., 1])  # ignored
    samples = discover(tmp_path)
    assert [s.name for s in samples] == ["003_frame0001"]
    loaded_image, mask = load_masked(samples[0])
    np.testing.assert_array_equal(loaded_image, np.dstack([image, np.zeros((6, 8), np.uint8)]))  # no NIR
    assert mask[0, 0] == 255
    assert mask[5, 7] == 255
    assert mask.sum() == 2 * 255


def test_flat_folder_of_images_for_unlabelled_data(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [s.name for s in discover(tmp_path, require_masks=False)] == ["a", "b"]
    with pytest.raises(DatasetError, match="no images found"):
        discover(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a directory"):
        discover(tmp_path / "missing")
