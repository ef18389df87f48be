"""How well the model is likely doing on recent uploads, without labels -- and, where uploads
have labels, how well it did.

The estimate reads each prediction record's confidence counts (:mod:`cropseg_core.confidence`)
with the temperature the reference profile ships (fitted on the real selection splits by
``cropseg-model profile``) and compares their mean with what the same estimate gives on the
real validation photos of the training sources (``expected_iou``). A drop of more than
``DRIFT_IOU_DROP`` is reported (``status: dropped``) and exported to Prometheus.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropseg_core.confidence import estimated_iou
from cropseg_core.features import ReferenceProfile
from cropseg_core.masks import score
from cropseg_core.repository import ImageRepository, NoLabelError, NoSegmentationError
from cropseg_core.store import StoreError
from cropseg_drift.settings import DriftSettings

# Score at most this many labelled uploads of the window (each is two PNG decodes).
MAX_LABELLED = 200


def _measured(repository: ImageRepository, records: list[dict[str, Any]]) -> list[float]:
    """IoU of the stored masks of the window's uploads that have a label."""
    scores: list[float] = []
    for record in records:
        if len(scores) >= MAX_LABELLED or not repository.has_label(record["image_id"]):
            continue
        try:
            _, predicted, label = repository.mask_and_label(record["image_id"], record["model_version"])
        except (NoLabelError, NoSegmentationError, StoreError):  # deleted or replaced meanwhile
            continue
        scores.append(score(predicted, label).iou)
    return scores


def estimate_performance(
    profile: ReferenceProfile,
    records: list[dict[str, Any]],
    repository: ImageRepository,
    settings: DriftSettings,
) -> dict[str, Any]:
    """The report's ``performance`` section for the window's prediction ``records``."""
    measured = _measured(repository, records)
    result: dict[str, Any] = {
        "measured_iou": float(np.mean(measured)) if measured else None,
        "labelled_images": len(measured),
    }
    calibration = profile.meta.get("iou_estimate")
    if not calibration or calibration.get("expected_iou") is None:
        reason = "the reference profile has no IoU calibration (cropseg-model profile --calibrate --check)"
        return {**result, "status": "unavailable", "reason": reason}
    temperature = float(calibration["temperature"])
    estimates = [
        estimated_iou(np.asarray(r["confidence"]), temperature) for r in records if r.get("confidence")
    ]
    values = [value for value in estimates if value is not None]
    expected = float(calibration["expected_iou"])
    result.update({
        "expected_iou": expected,
        "temperature": temperature,
        "calibrated_on": calibration["calibrated_on"],
        "tracking": calibration["tracking"],
        "images": len(values),
        "tolerance": settings.iou_drop,
    })  # fmt: skip
    if len(values) < settings.min_samples:
        need = settings.min_samples
        return {**result, "status": "insufficient_data",
                "reason": f"{len(values)} predictions with confidence, at least {need} needed"}  # fmt: skip
    estimate = float(np.mean(values))
    drop = expected - estimate
    return {**result, "status": "dropped" if drop > settings.iou_drop else "ok",
            "estimated_iou": estimate, "drop": drop}  # fmt: skip
