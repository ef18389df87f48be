"""Figures for the model card: the validation curve and example segmentations."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cropseg_core.files import write_atomic
from cropseg_core.masks import overlay, score
from cropseg_model.baselines import exg_otsu


def _save(figure: Any, path: Path, dpi: int = 110) -> None:
    # Figure objects render without pyplot's global state or a display backend.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def training_curve(history: list[dict[str, float]], stage_ends: list[int], path: Path) -> None:
    """Validation IoU (non-black) and training loss against the step; stages split by lines."""
    steps = [h["step"] for h in history]
    figure = Figure(figsize=(6.5, 3.2))
    left = figure.subplots()
    iou = [h["iou_non_black"] for h in history]
    left.plot(steps, iou, "o-", color="tab:green", label="val IoU (non-black)")
    left.set_xlabel("training step")
    left.set_ylabel("validation IoU (non-black)")
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(steps, [h["loss"] for h in history], "s--", color="tab:gray", label="train loss (EMA)")
    right.set_ylabel("training loss")
    for end in stage_ends:
        left.axvline(end, color="tab:blue", linestyle=":", linewidth=1)
        left.annotate(" stage 2", (end, max(iou)), ha="left", va="top", fontsize=8, color="tab:blue")
    figure.legend(loc="center right", bbox_to_anchor=(0.88, 0.5), fontsize=8)
    left.set_title("U-Net training on synthetic tiles")
    _save(figure, path)


def examples(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """One row per tile: image, true mask, U-Net overlay, ExG + Otsu overlay, with IoU."""
    figure = Figure(figsize=(12, 2.4 * len(rows)))
    axes = figure.subplots(len(rows), 4, squeeze=False)
    for row, (title, image, truth, predicted) in zip(axes, rows, strict=True):
        baseline = exg_otsu(image)
        panels = [
            (image, title),
            (truth, "true mask"),
            (overlay(image, predicted), f"U-Net  IoU {score(predicted, truth, image).iou:.2f}"),
            (overlay(image, baseline), f"ExG + Otsu  IoU {score(baseline, truth, image).iou:.2f}"),
        ]
        for axis, (pixels, label) in zip(row, panels, strict=True):
            axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
            axis.set_title(label, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    _save(figure, path, dpi=72)
