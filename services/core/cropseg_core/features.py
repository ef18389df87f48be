"""Per-image features for drift detection, computed the same way everywhere.

The model pipeline stores them for the training distribution (the reference profile that
ships with the model); the drift monitor computes them for recent uploads. One definition
keeps the two comparable. Both are per sensor layout: the features are computed on the
picture of the image in its layout (:func:`cropseg_core.bands.decode_picture`: true colour,
or the false-colour composite), and the profile holds reference rows for every layout
(:meth:`ReferenceProfile.for_layout`), since a CIR field looks nothing like an RGB one.

:func:`image_features` returns both kinds (it needs OpenCV: the ``features`` extra):

* the grey histogram: 256 bins of ITU-R BT.601 luma over all pixels, as fractions (the
  seed's Alibi Detect feature);
* the image properties the seed checked with Deepchecks, over in-field (non-black) pixels:
  brightness, RMS contrast, relative intensity of each channel, sharpness (variance of the
  Laplacian of luma) and the out-of-field black fraction; and three that name the shifts a
  camera or a pipeline introduces: the clipped fraction (over-exposure), JPEG blockiness
  (gradient across 8-pixel block edges over gradient elsewhere, beyond what a camera's
  ordinary JPEG shows: heavy compression) and detail
  (Laplacian spread over luma spread: blur, independent of contrast).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cropseg_core.masks import BLACK_LEVEL

PROPERTY_NAMES = (
    "brightness",
    "rms_contrast",
    "red_relative_intensity",
    "green_relative_intensity",
    "blue_relative_intensity",
    "sharpness",
    "black_fraction",
    "clipped_fraction",
    "jpeg_blockiness",
    "detail",
)
PROPERTY_LABELS = {
    "brightness": "brightness",
    "rms_contrast": "contrast",
    "red_relative_intensity": "red share",
    "green_relative_intensity": "green share",
    "blue_relative_intensity": "blue share",
    "sharpness": "sharpness",
    "black_fraction": "out-of-field (black) share",
    "clipped_fraction": "over-exposed (clipped) share",
    "jpeg_blockiness": "JPEG blockiness",
    "detail": "fine detail (blur when low)",
}
"""How reports and summaries name each property."""
# A pixel is clipped when its brightest channel reaches this (over-exposure saturates at 255;
# JPEG ringing leaves saturated pixels a few levels below it).
CLIPPED_LEVEL = 250
# Block-edge step ratio up to which compression is a camera's ordinary JPEG (quality >= 90).
BENIGN_BLOCKINESS = 1.15
# Out-of-field pixels: every channel at most BLACK_LEVEL (cv2.inRange bounds).
_BLACK_LOW, _BLACK_HIGH = np.zeros(3, np.uint8), np.full(3, BLACK_LEVEL, np.uint8)
_UNCLIPPED_HIGH = np.full(3, CLIPPED_LEVEL - 1, np.uint8)


def image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grey histogram (256,) and the PROPERTY_NAMES vector (10,) of one RGB uint8 image.

    Luma is ITU-R BT.601 rounded to 256 levels (OpenCV's RGB to grey), shared by the
    histogram, brightness, contrast and sharpness. Everything is a handful of OpenCV passes
    over the pixels: this is the drift job's inner loop, and it costs a third of decoding
    the image (docs/performance.md).
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    size = grey.size
    histogram = (cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel() / size).astype(np.float32)
    black = cv2.inRange(image, _BLACK_LOW, _BLACK_HIGH)
    count = size - cv2.countNonZero(black)
    black_fraction = 1.0 - count / size
    if count == 0:
        return histogram, np.array(
            [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, black_fraction, 0.0, 0.0, 0.0], np.float32
        )
    field = None if count == size else cv2.bitwise_not(black)
    mean, std = cv2.meanStdDev(grey, mask=field)
    channels = np.array(cv2.mean(image, mask=field)[:3])
    # 4-neighbour Laplacian; the border row and column have no full neighbourhood.
    laplacian = cv2.Laplacian(grey, cv2.CV_16S, ksize=1)[1:-1, 1:-1]
    interior = None if field is None else np.ascontiguousarray(field[1:-1, 1:-1])
    _, edge_std = cv2.meanStdDev(laplacian, mask=interior) if laplacian.size else (None, np.zeros((1, 1)))
    unclipped = cv2.countNonZero(cv2.inRange(image, _BLACK_LOW, _UNCLIPPED_HIGH))  # every channel below
    clipped = (size - unclipped) / count
    properties = [
        mean[0, 0] / 255.0,
        std[0, 0] / 255.0,
        *(channels / max(channels.sum(), 1e-9)),
        (edge_std[0, 0] / 255.0) ** 2,
        black_fraction,
        clipped,
        jpeg_blockiness(grey),
        float(edge_std[0, 0] / max(std[0, 0], 1e-3)),
    ]
    return histogram, np.array(properties, np.float32)


def jpeg_blockiness(grey: np.ndarray) -> float:
    """How far heavy JPEG compression shows its 8x8 blocks: the mean absolute luma step across
    block edges over the mean step elsewhere, less BENIGN_BLOCKINESS, floored at 0.

    The ratio is about 1.02 for a lossless photo, up to 1.14 at JPEG quality 92, 1.2-1.8 at
    quality 30 (measured on the real validation photos); below the knee everything reads 0,
    so a camera's ordinary JPEG and a lossless export of the same field do not differ.
    """
    height, width = grey.shape
    if height < 16 or width < 16:
        return 0.0
    steps_x = cv2.absdiff(grey[:, 1:], grey[:, :-1])  # step between column i and i + 1
    steps_y = cv2.absdiff(grey[1:], grey[:-1])
    edge_x, edge_y = steps_x[:, 7::8], steps_y[7::8]  # views: the steps across a block edge
    edge = float(edge_x.sum(dtype=np.int64)) / edge_x.size + float(edge_y.sum(dtype=np.int64)) / edge_y.size
    inner_x = (cv2.sumElems(steps_x)[0] - float(edge_x.sum(dtype=np.int64))) / (steps_x.size - edge_x.size)
    inner_y = (cv2.sumElems(steps_y)[0] - float(edge_y.sum(dtype=np.int64))) / (steps_y.size - edge_y.size)
    inner = inner_x + inner_y
    return max(0.0, edge / max(inner, 1e-3) - BENIGN_BLOCKINESS)


@dataclass(frozen=True)
class ReferenceProfile:
    """What "normal" input looks like: features of a reference set from the training distribution.

    Written by ``cropseg-model profile`` and shipped with the model; the drift monitor
    compares recent uploads and predictions against it.
    """

    grey_histograms: np.ndarray
    """(n, 256) per-image grey histograms."""
    properties: np.ndarray
    """(n, len(PROPERTY_NAMES)) per-image properties."""
    vegetation_fraction: np.ndarray
    """(n,) true vegetation fraction of each image."""
    predicted_vegetation_fraction: np.ndarray
    """(n,) the model's predicted vegetation fraction of each image."""
    image_names: np.ndarray
    layouts: np.ndarray
    """(n,) the sensor layout of each row."""
    sources: np.ndarray
    """(n,) the reference set each row came from (``ews/train``)."""
    meta: dict[str, Any]

    def for_layout(self, layout: str) -> ReferenceProfile:
        """The rows of one layout; ValueError when the profile has none."""
        rows = self.layouts == layout
        if not rows.any():
            present = ", ".join(sorted(set(self.layouts.tolist())))
            raise ValueError(
                f"the reference profile has no images in layout {layout!r} (it has {present}): "
                "rebuild it with cropseg-model profile"
            )
        return ReferenceProfile(
            self.grey_histograms[rows],
            self.properties[rows],
            self.vegetation_fraction[rows],
            self.predicted_vegetation_fraction[rows],
            self.image_names[rows],
            self.layouts[rows],
            self.sources[rows],
            {**self.meta, "layout": layout},
        )

    def source_counts(self) -> dict[str, int]:
        """Rows per reference set: what a report says the reference is."""
        names, counts = np.unique(self.sources, return_counts=True)
        return {str(name): int(count) for name, count in zip(names, counts, strict=True)}


def encode_profile(profile: ReferenceProfile) -> bytes:
    """The profile as the .npz file :func:`load_reference_profile` reads."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        grey_histograms=profile.grey_histograms.astype(np.float32),
        properties=profile.properties.astype(np.float32),
        property_names=np.array(PROPERTY_NAMES),
        vegetation_fraction=profile.vegetation_fraction.astype(np.float32),
        predicted_vegetation_fraction=profile.predicted_vegetation_fraction.astype(np.float32),
        image_names=profile.image_names,
        layouts=profile.layouts,
        sources=profile.sources,
        meta_json=np.array(json.dumps(profile.meta, sort_keys=True)),
    )
    return buffer.getvalue()


def decode_profile(data: bytes, name: str) -> ReferenceProfile:
    """A profile from .npz bytes; ValueError naming ``name`` and saying what is wrong."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as found:
            arrays = {key: found[key] for key in found.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read the reference profile {name}: {e}") from e
    return _profile(arrays, name)


def load_reference_profile(path: Path) -> ReferenceProfile:
    """Read a reference profile (.npz); ValueError saying what is wrong with the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the reference profile {path}: {e}") from e
    return decode_profile(data, str(path))


def _profile(arrays: dict[str, np.ndarray], name: str) -> ReferenceProfile:
    fields = (
        "grey_histograms",
        "properties",
        "vegetation_fraction",
        "predicted_vegetation_fraction",
        "image_names",
        "layouts",
        "sources",
    )
    missing = [key for key in (*fields, "property_names", "meta_json") if key not in arrays]
    if missing:
        raise ValueError(
            f"the reference profile {name} lacks {', '.join(missing)}: rebuild it with cropseg-model profile"
        )
    if tuple(arrays["property_names"]) != PROPERTY_NAMES:
        raise ValueError(
            f"the reference profile {name} has other image properties than this version computes"
        )
    return ReferenceProfile(**{key: arrays[key] for key in fields}, meta=json.loads(str(arrays["meta_json"])))
