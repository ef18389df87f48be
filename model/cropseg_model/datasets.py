"""Reading and writing segmentation datasets on disk.

Folder layouts read, all yielding images in the model's bands (uint8 (H, W, 4) red, green,
blue, NIR: :mod:`cropseg_core.bands`) with a vegetation mask:

* **paired**: ``images/<stem>.<png|jpg|tif>`` and ``masks/<stem>.png`` (255 = vegetation,
  128 = ignore, e.g. unsure pseudo-labels; images without a mask are allowed when labels are
  not needed). This is what ``generate`` and ``pseudo-label`` write. The sensor layout of
  each file comes from ``metadata.jsonl`` (``file_layout``) when there is one; otherwise a
  4-channel file is ``rgbn`` and anything else ``rgb``.
* **flat**: a folder of images without masks, accepted where labels are not needed
  (pseudo-labelling).
* **WeedMap**: the tile layout of the WeedMap dataset the seed project used, found anywhere
  below the root: ``<field>/tile/RGB/<frame>.png`` with colour labels in
  ``<field>/groundtruth/<anything><frame>_GroundTruth_color.png`` (black = soil, crop and
  weed colours are merged into one vegetation class).

All decoding goes through :func:`cropseg_core.imaging.decode_image`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cropseg_core.bands import LayoutError, get_layout, to_model_bands
from cropseg_core.imaging import DecodedImage, ImageDecodeError, decode_channels, decode_image
from cropseg_core.masks import IGNORE
from cropseg_core.settings import ImageLimits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_LIMITS = ImageLimits(max_bytes=500 * 1024 * 1024, max_pixels=150_000_000)


class DatasetError(ValueError):
    """The folder is not a dataset in a layout we can read; the message says what is wrong."""


@dataclass(frozen=True)
class Sample:
    """One image with its mask (uint8: 0, 255 and possibly 128 = ignore) if it has one."""

    name: str
    image_path: Path
    mask_path: Path | None
    layout: str | None = None
    """The file's sensor layout (None: from its channel count)."""

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_bands(self.image_path, self.layout)
        if self.mask_path is None:
            return image, None
        mask = read_mask(self.mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} "
                f"but its image is {image.shape[1]}x{image.shape[0]}"
            )
        return image, mask


def _decode(path: Path) -> DecodedImage:
    try:
        return decode_image(path.read_bytes(), _LIMITS)
    except ImageDecodeError as e:
        raise DatasetError(f"{path}: {e}") from e


def read_image(path: Path) -> np.ndarray:
    """The picture as RGB uint8 (for people and for the drift features)."""
    return _decode(path).pixels


def read_bands(path: Path, layout: str | None = None) -> np.ndarray:
    """The image in the model's bands, read in ``layout`` (None: rgbn for 4 channels, else rgb)."""
    try:
        channels = decode_channels(path.read_bytes(), _LIMITS).pixels
        if layout is None:
            layout = "rgbn" if channels.shape[2] == 4 else "rgb"
        return to_model_bands(channels, get_layout(layout))
    except (ImageDecodeError, LayoutError) as e:
        raise DatasetError(f"{path}: {e}") from e


def file_layouts(root: Path) -> dict[str, str]:
    """Sensor layout of each file named in ``root/metadata.jsonl`` (``file_layout``), if any."""
    path = root / "metadata.jsonl"
    if not path.is_file():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {e["name"]: e["file_layout"] for e in entries if "file_layout" in e}


def read_mask(path: Path) -> np.ndarray:
    """Read a mask: any channel above 127 is vegetation, exact 128 in all channels is ignore."""
    pixels = _decode(path).pixels
    mask = np.where(pixels.max(axis=2) > 127, 255, 0).astype(np.uint8)
    mask[(pixels == IGNORE).all(axis=2)] = IGNORE
    return mask


def read_weedmap_label(path: Path) -> np.ndarray:
    """WeedMap colour labels: black is soil, any colour (crop green, weed red) is vegetation."""
    pixels = _decode(path).pixels
    return np.where(pixels.max(axis=2) > 0, 255, 0).astype(np.uint8)


def discover(root: Path, *, require_masks: bool = True) -> list[Sample]:
    """Find the samples under ``root`` in either layout, sorted by name."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    if (root / "images").is_dir():
        samples = _paired(root, require_masks)
    else:
        samples = _weedmap(root, require_masks)
        if not samples and not require_masks:  # a plain folder of unlabelled images
            samples = [
                Sample(p.stem, p, None) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
            ]
    if not samples:
        raise DatasetError(
            f"no images found in {root}: expected images/ (+ masks/) or WeedMap tile/RGB folders"
        )
    return samples


def _paired(root: Path, require_masks: bool) -> list[Sample]:
    masks = {p.stem: p for p in (root / "masks").glob("*.png")} if (root / "masks").is_dir() else {}
    layouts = file_layouts(root)
    samples = []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks.get(path.stem)
        if mask is None and require_masks:
            raise DatasetError(f"{path} has no mask: expected {root / 'masks' / (path.stem + '.png')}")
        samples.append(Sample(path.stem, path, mask, layouts.get(path.stem)))
    return samples


def _weedmap(root: Path, require_masks: bool) -> list[Sample]:
    samples = []
    for rgb_dir in sorted(p for p in root.rglob("RGB") if p.is_dir() and p.parent.name == "tile"):
        field = rgb_dir.parent.parent
        labels = {}
        for label in (field / "groundtruth").glob("*_GroundTruth_color.png"):
            labels[label.name.removesuffix("_GroundTruth_color.png")] = label
        for path in sorted(rgb_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = next(
                (v for k, v in labels.items() if k == path.stem or k.endswith("_" + path.stem)), None
            )
            if match is None and require_masks:
                raise DatasetError(
                    f"{path} has no *{path.stem}_GroundTruth_color.png in {field / 'groundtruth'}"
                )
            samples.append(Sample(f"{field.name}_{path.stem}", path, match))
    return samples


def load_masked(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Load image and mask; WeedMap colour labels are converted to the binary mask."""
    if sample.mask_path is not None and sample.mask_path.name.endswith("_GroundTruth_color.png"):
        image = read_bands(sample.image_path, "rgb")
        mask = read_weedmap_label(sample.mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"{sample.mask_path}: label size differs from its image")
        return image, mask
    image, maybe_mask = sample.load()
    if maybe_mask is None:
        raise DatasetError(f"{sample.image_path} has no mask")
    return image, maybe_mask


def iter_pairs(root: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for sample in discover(root):
        image, mask = load_masked(sample)
        yield sample.name, image, mask
