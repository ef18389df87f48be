"""The reference profile shipped with the model: what "normal" input looks like.

For every image of a reference set drawn from the training distribution, in every sensor
layout, it stores the drift features of :mod:`cropseg_core.features` (grey-level histogram,
image properties, computed on the picture in that layout), the true vegetation fraction and
the vegetation fraction the segmentation pipeline predicts for that file. The drift monitor
compares recent uploads of one layout and their predictions against that layout's rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cropseg_core.bands import LAYOUTS, display_rgb, from_model_bands
from cropseg_core.features import PROPERTY_NAMES, image_features
from cropseg_core.files import write_atomic
from cropseg_core.masks import vegetation_fraction
from cropseg_model.datasets import discover, load_masked
from cropseg_model.evaluate import Evaluator

PROFILE_VERSION = 2


def build_profile(
    model: Path, data: Path, out: Path, progress: bool = True, layouts: list[str] | None = None
) -> dict[str, object]:
    evaluator = Evaluator(model)
    chosen = layouts or list(LAYOUTS)
    histograms, properties, truth, predicted, names, rows = [], [], [], [], [], []
    for sample in tqdm(discover(data), desc="profiling", unit="img", disable=not progress):
        bands, mask = load_masked(sample)
        for name in chosen if bands[..., 3].any() else ["rgb"]:
            layout = LAYOUTS[name]
            view = bands * np.array(layout.present(), np.uint8)
            histogram, image_properties = image_features(display_rgb(view, layout))
            histograms.append(histogram)
            properties.append(image_properties)
            truth.append(float((mask > 127).mean()))
            predicted.append(vegetation_fraction(evaluator.segment(from_model_bands(view, layout), layout)))
            names.append(sample.name)
            rows.append(name)
    info = evaluator.info
    meta = {
        "profile_version": PROFILE_VERSION,
        "model_name": info.name,
        "model_version": info.version,
        "model_sha256": info.sha256,
        "source": data.name,
        "images": len(set(names)),
        "layouts": sorted(set(rows)),
        "threshold": evaluator.threshold,
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
        layouts=np.array(rows),
        meta_json=np.array(json.dumps(meta, sort_keys=True)),
    )
    write_atomic(out, buffer.getvalue())
    return meta
