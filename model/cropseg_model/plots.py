"""Figures for the model card: the validation curve and example segmentations."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cropseg_core.files import write_atomic
from cropseg_core.masks import overlay, score


def _save(figure: Any, path: Path, dpi: int = 110) -> None:
    # Figure objects render without pyplot's global state or a display backend.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def training_curve(history: list[dict[str, float]], stage_ends: list[int], path: Path) -> None:
    """Validation IoU (non-black) and training loss against the step; stages split by lines."""
    steps = [h["step"] for h in history]
    figure = Figure(figsize=(8.5, 3.4))
    left = figure.subplots()
    iou = [h["iou_non_black"] for h in history]
    left.plot(steps, iou, "o-", color="tab:green", label="selection IoU (mean)")
    keys = sorted({k for h in history for k in h if k.startswith("iou/")})
    colours = ("tab:olive", "tab:brown", "tab:purple", "tab:cyan", "tab:pink")
    for key, colour in zip(keys, colours, strict=False):
        points = [(h["step"], h[key]) for h in history if key in h]
        left.plot(*zip(*points, strict=True), ".:", color=colour, label=key.removeprefix("iou/"))
    left.set_xlabel("training step")
    left.set_ylabel("validation IoU (non-black)")
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(steps, [h["loss"] for h in history], "s--", color="tab:gray", label="train loss (EMA)")
    right.set_ylabel("training loss")
    for end in stage_ends:
        left.axvline(end, color="tab:blue", linestyle=":", linewidth=1)
        left.annotate(" stage 2", (end, min(iou)), ha="left", va="bottom", fontsize=8, color="tab:blue")
    figure.legend(loc="upper left", bbox_to_anchor=(0.8, 0.92), fontsize=7)
    figure.subplots_adjust(right=0.62)
    left.set_title("Training: IoU over the selection sets")
    _save(figure, path)


def examples(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]], path: Path) -> None:
    """One row per image: picture, true mask, pipeline overlay, baseline overlay, with IoU."""
    figure = Figure(figsize=(12, 2.6 * len(rows)))
    axes = figure.subplots(len(rows), 4, squeeze=False)
    for row, (title, picture, truth, predicted, baseline, baseline_label) in zip(axes, rows, strict=True):
        panels = [
            (picture, title),
            (truth, "true mask"),
            (overlay(picture, predicted), f"cropseg  IoU {score(predicted, truth).iou:.2f}"),
            (overlay(picture, baseline), f"{baseline_label}  IoU {score(baseline, truth).iou:.2f}"),
        ]
        for axis, (pixels, label) in zip(row, panels, strict=True):
            axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
            axis.set_title(label, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    _save(figure, path, dpi=72)


def scale_plot(by_set: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """IoU (non-black) against scale, one panel per set: the pipeline and each baseline."""
    figure = Figure(figsize=(4.2 * len(by_set), 3.2))
    axes = figure.subplots(1, len(by_set), squeeze=False)[0]
    styles = {"unet": ("o-", "tab:green"), "exg_otsu": ("s--", "tab:orange"),
              "ndvi_otsu": ("^--", "tab:red"), "green_kmeans": ("d:", "tab:gray")}  # fmt: skip
    labels = {"unet": "cropseg pipeline", "exg_otsu": "ExG + Otsu", "ndvi_otsu": "NDVI + Otsu",
              "green_kmeans": "green filter + k-means"}  # fmt: skip
    for axis, (name, table) in zip(axes, by_set.items(), strict=True):
        scales = sorted(table, key=float)
        for method, (marker, colour) in styles.items():
            values = [table[s].get(method) for s in scales]
            if any(v is not None for v in values):
                axis.plot([float(s) for s in scales], values, marker, color=colour, label=labels[method])
        axis.set_title(name)
        axis.set_xlabel("scale (fraction of the original size)")
        axis.set_ylabel("vegetation IoU")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    _save(figure, path)
