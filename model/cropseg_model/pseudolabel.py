"""Pseudo-labels for unlabelled real images, the seed's training strategy made safe.

A pixel gets a label only where the current model is confident and at least
``min_agree`` of the baselines agree with it; every other pixel is written as 128
(ignore), which the training loss skips. Fine-tuning on the result adapts the model to a
new camera without hand labelling and without teaching it the baselines' mistakes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cropseg_core.bands import from_model_bands, get_layout
from cropseg_core.files import write_atomic
from cropseg_core.masks import IGNORE
from cropseg_model.baselines import baselines_for
from cropseg_model.datasets import discover, read_bands
from cropseg_model.evaluate import Evaluator


def pseudo_mask(
    probability: np.ndarray, baseline_masks: list[np.ndarray], confidence: float = 0.85, min_agree: int = 1
) -> np.ndarray:
    """Combine model probability and baseline masks into a mask with 128 where unsure."""
    vegetation = probability >= confidence
    soil = probability <= 1 - confidence
    votes = (
        np.stack([m > 127 for m in baseline_masks])
        if baseline_masks
        else np.zeros((0, *probability.shape), bool)
    )
    agree_vegetation = votes.sum(axis=0) >= min_agree
    agree_soil = (~votes).sum(axis=0) >= min_agree
    mask = np.full(probability.shape, IGNORE, np.uint8)
    mask[vegetation & agree_vegetation] = 255
    mask[soil & agree_soil] = 0
    return mask


def pseudo_label(
    model: Path,
    images: Path,
    out: Path,
    confidence: float = 0.85,
    min_agree: int = 1,
    progress: bool = True,
    layout: str = "rgb",
) -> dict[str, float | int]:
    """Write out/images (copies) and out/masks (pseudo-labels) for every image under ``images``
    (files in sensor ``layout``; the model's probability comes from the segmentation pipeline)."""
    evaluator = Evaluator(model)
    sensor = get_layout(layout)
    baselines = baselines_for(sensor).values()
    kept = total = 0
    samples = discover(images, require_masks=False)
    for sample in tqdm(samples, desc="pseudo-labelling", unit="img", disable=not progress):
        bands = read_bands(sample.image_path, layout)
        probability = evaluator.run(from_model_bands(bands, sensor), sensor).probability
        mask = pseudo_mask(probability, [f(bands) for f in baselines], confidence, min_agree)
        kept += int((mask != IGNORE).sum())
        total += mask.size
        target = out / "images" / f"{sample.name}{sample.image_path.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.image_path, target)
        ok, png = cv2.imencode(".png", mask)
        if not ok:  # pragma: no cover
            raise RuntimeError("could not encode mask")
        write_atomic(out / "masks" / f"{sample.name}.png", png.tobytes())
    return {"images": len(samples), "labelled_pixel_fraction": kept / total if total else 0.0}
