"""Side-by-side evaluation of the ONNX U-Net and the two baselines on a labelled folder."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cropseg_core.masks import IGNORE, MaskScore, score
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.baselines import BASELINES
from cropseg_model.datasets import discover, load_masked
from cropseg_model.metrics import summarise

EXPOSURE_GAINS = (0.5, 0.7, 1.0, 1.4, 2.0)
METHOD_LABELS = {"unet": "U-Net (ONNX)", "exg_otsu": "ExG + Otsu", "green_kmeans": "Green filter + k-means"}


def _groups(root: Path) -> dict[str, str]:
    """Sensor of each generated tile (from metadata.jsonl), for a per-sensor breakdown."""
    path = root / "metadata.jsonl"
    if not path.exists():
        return {}
    return {m["name"]: m["sensor"] for m in map(json.loads, path.read_text().splitlines())}


def evaluate(
    model: Path, data: Path, progress: bool = True, threshold: float | None = None, robustness: bool = False
) -> dict[str, object]:
    """Score every method on every image of ``data``; returns overall and per-sensor means.

    With ``robustness`` the U-Net and ExG + Otsu are also scored on copies of each image
    darkened or brightened by the ``EXPOSURE_GAINS`` (then clipped): a network keyed on
    absolute colour would lose accuracy as soon as the exposure differs from training.
    """
    segmenter = OnnxSegmenter(model)
    info = segmenter.load()
    threshold = info.threshold if threshold is None else threshold
    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "unet": lambda image: segmenter.segment(image, threshold),
        **BASELINES,
    }
    groups = _groups(data)
    scores: dict[str, list[MaskScore]] = defaultdict(list)
    by_group: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    errors: dict[str, int] = defaultdict(int)
    edge: dict[str, int] = defaultdict(int)
    exposure: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    samples = discover(data)
    for sample in tqdm(samples, desc="evaluating", unit="img", disable=not progress):
        image, truth = load_masked(sample)
        for name, method in methods.items():
            started = time.perf_counter()
            prediction = method(image)
            seconds[name] += time.perf_counter() - started
            result = score(prediction, truth, image)
            scores[name].append(result)
            wrong, near_edge = edge_errors(prediction, truth)
            errors[name] += wrong
            edge[name] += near_edge
            if sample.name in groups:
                by_group[(groups[sample.name], name)].append(result)
        for gain in EXPOSURE_GAINS if robustness else ():
            shifted = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            for name in ("unet", "exg_otsu"):
                exposure[(f"{gain:g}", name)].append(score(methods[name](shifted), truth, image))
    report: dict[str, object] = {
        "data": str(data),
        "model": str(model),
        "threshold": threshold,
        "methods": {
            name: {
                **summarise(items),
                "seconds_per_image": seconds[name] / len(items),
                "wrong_pixels_within_1px_of_edge": edge[name] / max(errors[name], 1),
            }
            for name, items in scores.items()
        },
        "by_sensor": {
            f"{group}/{name}": summarise(items) for (group, name), items in sorted(by_group.items())
        },
    }
    if robustness:
        report["exposure_robustness"] = {
            f"{gain:g}": {
                name: float(summarise(exposure[(f"{gain:g}", name)])["iou_non_black"])
                for name in ("unet", "exg_otsu")
            }
            for gain in EXPOSURE_GAINS
        }
    return report


def edge_errors(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """Wrong pixels, and how many of them lie within one pixel of a true vegetation edge."""
    counted = truth != IGNORE
    wrong = ((prediction > 127) != (truth > 127)) & counted
    vegetation = (truth > 127).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    near_edge = cv2.dilate(vegetation, kernel) != cv2.erode(vegetation, kernel)
    return int(wrong.sum()), int((wrong & near_edge).sum())


def robustness_table(robustness: dict[str, dict[str, float]]) -> str:
    rows = ["| exposure gain | " + " | ".join(robustness) + " |", "|---|" + "---:|" * len(robustness)]
    for name in ("unet", "exg_otsu"):
        cells = " | ".join(f"{robustness[g][name]:.3f}" for g in robustness)
        rows.append(f"| {METHOD_LABELS[name]} | {cells} |")
    return "\n".join(rows)


def markdown_table(report: dict[str, object]) -> str:
    """The README/model-card table: one row per method."""
    methods = report["methods"]
    assert isinstance(methods, dict)
    columns = ["IoU (non-black)", "pixel accuracy (non-black)", "IoU (all)", "pixel accuracy (all)"]
    rows = ["| method | " + " | ".join(columns) + " | ms / image |", "|---|" + "---:|" * (len(columns) + 1)]
    for name in sorted(methods, key=lambda n: list(METHOD_LABELS).index(n) if n in METHOD_LABELS else 99):
        m = methods[name]
        values = [m["iou_non_black"], m["pixel_accuracy_non_black"], m["iou"], m["pixel_accuracy"]]
        cells = " | ".join(f"{v:.3f}" for v in values)
        rows.append(f"| {METHOD_LABELS.get(name, name)} | {cells} | {1000 * m['seconds_per_image']:.1f} |")
    return "\n".join(rows)


def sensor_table(report: dict[str, object]) -> str:
    by_sensor = report["by_sensor"]
    assert isinstance(by_sensor, dict)
    if not by_sensor:
        return ""
    sensors = sorted({key.split("/")[0] for key in by_sensor})
    names = [n for n in METHOD_LABELS if any(k.endswith("/" + n) for k in by_sensor)]
    rows = [
        "| sensor | images | " + " | ".join(METHOD_LABELS[n] for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for sensor in sensors:
        count = by_sensor[f"{sensor}/unet"]["non_black_images"] if f"{sensor}/unet" in by_sensor else 0
        cells = [f"{by_sensor[f'{sensor}/{n}']['iou_non_black']:.3f}" for n in names]
        rows.append(f"| {sensor} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
