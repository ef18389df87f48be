"""The evaluation report's types: what ``cropseg-model evaluate`` writes (``--out``), what the
model card reads and ``artifacts/metrics.json`` keeps under ``evaluation``.

The JSON is the one these reports have always had: :meth:`EvaluationReport.to_json` gives the
same keys (sweeps a set was not scored on stay absent), and every report written before
validates (:meth:`EvaluationReport.model_validate`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

SweepTable = dict[str, dict[str, float]]
"""IoU (non-black) by setting (a scale, enlargement factor or exposure gain) then method."""


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON has it: fields that were never set (a sweep not run) left out."""
        return self.model_dump(exclude_unset=True)


class MethodScores(_Report):
    """One method on one set in one layout: means over the set's images."""

    images: int
    non_black_images: int
    """Images not entirely out of field (every method scores 1 on those)."""
    pixel_accuracy: float
    iou: float
    pixel_accuracy_non_black: float
    iou_non_black: float
    boundary_f1: float
    cover_predicted: float
    cover_true: float
    seconds_per_image: float


class SetEvaluation(_Report):
    """One labelled folder: every layout's methods, and the sweeps it was scored on."""

    data: str
    model: str
    threshold: float
    auto_leaf_px: float
    layouts: dict[str, dict[str, MethodScores]]
    """Layout, then method (``unet``, ``exg_otsu``...)."""
    wrong_pixels_within_1px_of_edge: dict[str, float]
    """Per method, the share of its wrong pixels that lie within 1 px of a true edge."""
    scales: SweepTable | None = None
    enlargement: SweepTable | None = None
    exposure_robustness: SweepTable | None = None


class EvaluationReport(_Report):
    """The model card's evaluation: real folders and the synthetic one, by set name."""

    model: str
    threshold: float
    auto_leaf_px: float
    real_folders: list[str]
    synthetic_folder: str | None
    synthetic_name: str | None
    sets: dict[str, SetEvaluation]
