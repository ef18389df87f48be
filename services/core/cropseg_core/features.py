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
  Laplacian of luma) and the out-of-field black fraction.
"""

from __future__ import annotations

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
)
# Out-of-field pixels: every channel at most BLACK_LEVEL (cv2.inRange bounds).
_BLACK_LOW, _BLACK_HIGH = np.zeros(3, np.uint8), np.full(3, BLACK_LEVEL, np.uint8)


def image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grey histogram (256,) and the PROPERTY_NAMES vector (7,) of one RGB uint8 image.

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
        return histogram, np.array([0.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, black_fraction], np.float32)
    field = None if count == size else cv2.bitwise_not(black)
    mean, std = cv2.meanStdDev(grey, mask=field)
    channels = np.array(cv2.mean(image, mask=field)[:3])
    # 4-neighbour Laplacian; the border row and column have no full neighbourhood.
    laplacian = cv2.Laplacian(grey, cv2.CV_16S, ksize=1)[1:-1, 1:-1]
    interior = None if field is None else np.ascontiguousarray(field[1:-1, 1:-1])
    _, edge_std = cv2.meanStdDev(laplacian, mask=interior) if laplacian.size else (None, np.zeros((1, 1)))
    properties = [
        mean[0, 0] / 255.0,
        std[0, 0] / 255.0,
        *(channels / max(channels.sum(), 1e-9)),
        (edge_std[0, 0] / 255.0) ** 2,
        black_fraction,
    ]
    return histogram, np.array(properties, np.float32)


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
            {**self.meta, "layout": layout},
        )


def load_reference_profile(path: Path) -> ReferenceProfile:
    """Read a reference profile (.npz); ValueError saying what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read the reference profile {path}: {e}") from e
    fields = (
        "grey_histograms",
        "properties",
        "vegetation_fraction",
        "predicted_vegetation_fraction",
        "image_names",
        "layouts",
    )
    missing = [key for key in (*fields, "property_names", "meta_json") if key not in arrays]
    if missing:
        raise ValueError(
            f"the reference profile {path} lacks {', '.join(missing)}: rebuild it with cropseg-model profile"
        )
    if tuple(arrays["property_names"]) != PROPERTY_NAMES:
        raise ValueError(
            f"the reference profile {path} has other image properties than this version computes"
        )
    return ReferenceProfile(**{key: arrays[key] for key in fields}, meta=json.loads(str(arrays["meta_json"])))
