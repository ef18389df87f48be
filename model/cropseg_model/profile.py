"""The reference profile shipped with the model: what "normal" input looks like.

For every image of the reference sets drawn from the training distribution, in the sensor
layouts each set stands for, it stores the drift features of :mod:`cropseg_core.features`
(grey-level histogram, image properties, computed on the picture in that layout), the true
vegetation fraction, the vegetation fraction the segmentation pipeline predicts for that
file, and which set the row came from. The drift monitor compares recent uploads of one
layout and their predictions against that layout's rows.

``make model`` builds it from the real photos the model learned from (the ``rgb`` rows: what
users upload is photos, and 200 synthetic tiles beside them make every real upload window look
drifted -- docs/drift.md measures it) and from synthetic reference tiles for the NIR layouts,
where no real labelled imagery exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cropseg_core.bands import LAYOUTS, display_rgb, from_model_bands
from cropseg_core.confidence import estimated_iou, fit_temperature
from cropseg_core.features import PROPERTY_NAMES, ReferenceProfile, encode_profile, image_features
from cropseg_core.files import write_atomic
from cropseg_core.masks import score, vegetation_fraction
from cropseg_model.datasets import discover, load_masked
from cropseg_model.evaluate import Evaluator

PROFILE_VERSION = 3


def source_name(folder: Path) -> str:
    """How a reference set is named in the profile and in drift reports: ``ews/train``."""
    return f"{folder.parent.name}/{folder.name}"


def _confidence_and_iou(evaluator: Evaluator, folder: Path) -> tuple[list[np.ndarray], list[float]]:
    """Per image of a labelled folder, in true colour: the pipeline's confidence counts and IoU."""
    layout = LAYOUTS["rgb"]
    counts, measured = [], []
    for sample in discover(folder):
        bands, mask = load_masked(sample)
        segmentation = evaluator.run(from_model_bands(bands, layout), layout)
        counts.append(segmentation.confidence)
        measured.append(score(segmentation.mask, mask).iou)
    return counts, measured


def calibrate_iou_estimate(
    evaluator: Evaluator, calibrate: list[Path], check: list[Path]
) -> dict[str, object]:
    """The temperature of the label-free IoU estimate (:mod:`cropseg_core.confidence`), fitted on
    the ``calibrate`` folders, and how well the estimate tracks the measured IoU on ``check``."""
    pairs = [_confidence_and_iou(evaluator, folder) for folder in calibrate]
    temperature = fit_temperature([c for p in pairs for c in p[0]], [m for p in pairs for m in p[1]])
    tracking: dict[str, dict[str, Any]] = {}
    set_estimates = []
    for folder in check:
        counts, truth = _confidence_and_iou(evaluator, folder)
        found = [(estimated_iou(c, temperature), m) for c, m in zip(counts, truth, strict=True)]
        kept = [(e, m) for e, m in found if e is not None]  # bare soil has no estimate
        if not kept:
            tracking[source_name(folder)] = {"images": 0, "reason": "no image with vegetation to estimate"}
            continue
        estimates, measured = np.array([e for e, _ in kept]), np.array([m for _, m in kept])
        spread = len(kept) > 2 and estimates.std() > 0 and measured.std() > 0
        tracking[source_name(folder)] = {
            "images": len(kept),
            "measured_iou": float(measured.mean()),
            "estimated_iou": float(estimates.mean()),
            "mean_absolute_error": float(np.abs(estimates - measured).mean()),
            "correlation": float(np.corrcoef(estimates, measured)[0, 1]) if spread else None,
        }
        set_estimates.append(float(estimates.mean()))
    # what the estimate gives on held-out photos of the training sources: the drift monitor's yardstick
    expected = float(np.mean(set_estimates)) if set_estimates else None
    return {
        "temperature": temperature,
        "calibrated_on": [source_name(folder) for folder in calibrate],
        "tracking": tracking,
        "expected_iou": expected,
    }


def build_profile(
    model: Path,
    sets: list[tuple[Path, list[str] | None]],
    out: Path,
    progress: bool = True,
    calibrate: list[Path] | None = None,
    check: list[Path] | None = None,
) -> dict[str, object]:
    """Profile of each ``(folder, layouts)`` set: its images in those layouts (None: every layout
    the images have bands for; 3-band photos give ``rgb`` rows only). With ``calibrate`` (and
    ``check``) folders, also the label-free IoU estimate's temperature and how it tracked."""
    evaluator = Evaluator(model)
    samples = [(folder, layouts, sample) for folder, layouts in sets for sample in discover(folder)]
    histograms, properties, truth, predicted, names, rows, sources = [], [], [], [], [], [], []
    for folder, layouts, sample in tqdm(samples, desc="profiling", unit="img", disable=not progress):
        bands, mask = load_masked(sample)
        for name in layouts or (list(LAYOUTS) if bands[..., 3].any() else ["rgb"]):
            layout = LAYOUTS[name]
            if layout.has("nir") and not bands[..., 3].any():
                continue  # a photo has no NIR band to show in this layout
            view = bands * np.array(layout.present(), np.uint8)
            histogram, image_properties = image_features(display_rgb(view, layout))
            histograms.append(histogram)
            properties.append(image_properties)
            truth.append(float((mask > 127).mean()))
            predicted.append(vegetation_fraction(evaluator.segment(from_model_bands(view, layout), layout)))
            names.append(sample.name)
            rows.append(name)
            sources.append(source_name(folder))
    info = evaluator.info
    meta = {
        "profile_version": PROFILE_VERSION,
        "model_name": info.name,
        "model_version": info.version,
        "model_sha256": info.sha256,
        "sources": list(dict.fromkeys(sources)),
        "images": len(set(zip(sources, names, strict=True))),
        "layouts": sorted(set(rows)),
        "threshold": evaluator.threshold,
        "property_names": list(PROPERTY_NAMES),
    }
    if calibrate:
        meta["iou_estimate"] = calibrate_iou_estimate(evaluator, calibrate, check or [])
    profile = ReferenceProfile(
        grey_histograms=np.stack(histograms),
        properties=np.stack(properties),
        vegetation_fraction=np.array(truth, np.float32),
        predicted_vegetation_fraction=np.array(predicted, np.float32),
        image_names=np.array(names),
        layouts=np.array(rows),
        sources=np.array(sources),
        meta=meta,
    )
    write_atomic(out, encode_profile(profile))
    return meta
