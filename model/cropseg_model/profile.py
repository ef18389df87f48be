"""The reference profile shipped with the model: what "normal" input looks like.

For every image of a reference set drawn from the training distribution it stores the
drift features of :mod:`cropseg_core.features` (grey-level histogram, image properties),
the true vegetation fraction and the model's predicted vegetation fraction. The drift
monitor compares recent uploads and predictions against these arrays.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cropseg_core.features import PROPERTY_NAMES, image_features
from cropseg_core.files import write_atomic
from cropseg_core.masks import vegetation_fraction
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.datasets import discover, load_masked

PROFILE_VERSION = 1


def build_profile(model: Path, data: Path, out: Path, progress: bool = True) -> dict[str, object]:
    segmenter = OnnxSegmenter(model)
    info = segmenter.load()
    histograms, properties, truth, predicted, names = [], [], [], [], []
    for sample in tqdm(discover(data), desc="profiling", unit="img", disable=not progress):
        image, mask = load_masked(sample)
        names.append(sample.name)
        histogram, image_properties = image_features(image)
        histograms.append(histogram)
        properties.append(image_properties)
        truth.append(float((mask > 127).mean()))
        predicted.append(vegetation_fraction(segmenter.segment(image)))
    meta = {
        "profile_version": PROFILE_VERSION,
        "model_name": info.name,
        "model_version": info.version,
        "model_sha256": info.sha256,
        "source": data.name,
        "images": len(names),
        "threshold": info.threshold,
        "property_names": list(PROPERTY_NAMES),
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        grey_histograms=np.stack(histograms).astype(np.float32),
        properties=np.stack(properties).astype(np.float32),
        property_names=np.array(PROPERTY_NAMES),
        vegetation_fraction=np.array(truth, np.float32),
        predicted_vegetation_fraction=np.array(predicted, np.float32),
        image_names=np.array(names),
        meta_json=np.array(json.dumps(meta, sort_keys=True)),
    )
    write_atomic(out, buffer.getvalue())
    return meta
