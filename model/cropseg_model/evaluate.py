"""Side-by-side evaluation of what users get: the segmentation pipeline (band mapping,
working resolution, tiles, the ONNX model, resize back, threshold; exactly what the API
runs) against the simple baselines each layout allows, on labelled folders.

Per folder it scores:

* every requested **layout**: each image is written in that layout's channels first (a
  four-band synthetic tile becomes a CIR, red/NIR... file), then read back through the
  pipeline as a user's file would be; the baselines see the same bands;
* a **scale** sweep (``--scales``): image and mask are first shrunk (area average; mask by
  majority), as a coarser ground sampling distance would show them;
* an **enlargement** check (``--enlarge``): images enlarged as a high-resolution photo of
  the same scene would be; the pipeline with its automatic working resolution against the
  same pipeline forced to full resolution.

Scores are vegetation IoU and pixel accuracy per image, then means (non-black: leaving out
tiles entirely out of field, where every method scores 1 trivially); boundary F1 (edges
within 2 px, :func:`cropseg_model.metrics.boundary_f1`) and the mean predicted and true
vegetation cover show whether edges are drawn where they are and plants too wide.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cropseg_core.bands import LAYOUTS, Layout, from_model_bands
from cropseg_core.masks import IGNORE, MaskScore, score
from cropseg_core.model import LoadedModel
from cropseg_core.pipeline import Pipeline, PipelineConfig, Segmentation
from cropseg_model.baselines import BASELINES, baselines_for
from cropseg_model.datasets import discover, load_masked
from cropseg_model.evaluation_report import EvaluationReport, MethodScores, SetEvaluation, SweepTable
from cropseg_model.metrics import boundary_f1, summarise

EXPOSURE_GAINS = (0.5, 0.7, 1.0, 1.4, 2.0)
METHOD_LABELS = {
    "unet": "cropseg pipeline",
    "unet_network_only": "network alone (no index refinement)",
    "exg_otsu": "ExG + Otsu",
    "ndvi_otsu": "NDVI + Otsu",
    "difference_otsu": "(NIR − red) + Otsu",
    "green_kmeans": "Green filter + k-means",
}
Method = Callable[[np.ndarray], np.ndarray]


def shrink(bands: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask at ``factor`` of their size: area-averaged bands, majority-vote mask."""
    height, width = mask.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.dstack(
        [cv2.resize(bands[..., i], size, interpolation=cv2.INTER_AREA) for i in range(bands.shape[2])]
    )
    votes = cv2.resize((mask > 127).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return small, np.where(votes >= 0.5, 255, 0).astype(np.uint8)


def enlarge(bands: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (bicubic) and mask (nearest) ``factor`` times larger: a closer, sharper photo."""
    height, width = mask.shape
    size = (round(width * factor), round(height * factor))
    big = np.dstack(
        [cv2.resize(bands[..., i], size, interpolation=cv2.INTER_CUBIC) for i in range(bands.shape[2])]
    )
    return big, cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


class Evaluator:
    """The model through the pipeline, plus the baselines, on one machine and one thread."""

    def __init__(
        self,
        model: Path,
        threshold: float | None = None,
        config: PipelineConfig | None = None,
        leaf_widths: tuple[float, ...] = (),
    ) -> None:
        self.model = LoadedModel.load(model, config=config, warmup_runs=0)
        self.info = self.model.info
        self.threshold = self.model.threshold(threshold)
        self.pipeline = self.model.pipeline
        self.config = self.pipeline.config
        self.full_resolution = self.model.variant(auto_leaf_px=0)
        self.network_only = self.model.variant(refine_by_index=False)
        # Other automatic working resolutions to compare on enlarged photos (leaf width, px).
        self.leaf_widths = {w: self.model.variant(auto_leaf_px=w) for w in leaf_widths}

    def run(self, channels: np.ndarray, layout: Layout, pipeline: Pipeline | None = None) -> Segmentation:
        """What the API computes for this file (its channels as stored) in this layout."""
        used = pipeline or self.pipeline
        return self.model.run(channels, layout, self.threshold, pipeline=used)

    def segment(self, channels: np.ndarray, layout: Layout, pipeline: Pipeline | None = None) -> np.ndarray:
        """What the API answers for this file in this layout: the mask at the file's size."""
        return self.run(channels, layout, pipeline).mask

    def methods(self, layout: Layout) -> dict[str, Method]:
        """The pipeline, for layouts it refines by the index also without the refinement
        (``unet_network_only``), and the baselines the layout allows."""

        def unet(bands: np.ndarray) -> np.ndarray:
            return self.segment(from_model_bands(bands, layout), layout)

        def network_only(bands: np.ndarray) -> np.ndarray:
            return self.segment(from_model_bands(bands, layout), layout, self.network_only)

        refines = self.config.refine_by_index and layout.has("nir") and layout.has("red")
        variants = {"unet_network_only": network_only} if refines else {}
        return {"unet": unet, **variants, **baselines_for(layout)}


def _as_layout(bands: np.ndarray, layout: Layout) -> np.ndarray:
    """The bands as a file in ``layout`` would give them back (absent bands 0)."""
    return bands * np.array(layout.present(), np.uint8)


def evaluate(
    model: Path,
    data: Path,
    *,
    layouts: list[str] | None = None,
    scales: tuple[float, ...] = (),
    enlarge_factors: tuple[float, ...] = (),
    threshold: float | None = None,
    robustness: bool = False,
    progress: bool = True,
    evaluator: Evaluator | None = None,
    limit: int | None = None,
) -> SetEvaluation:
    """Score the pipeline and the baselines on every labelled image of ``data``.

    ``layouts`` defaults to rgb for three-channel folders and every layout for four-band
    ones. Returns per-layout method summaries, per-scale and per-enlargement IoU, and with
    ``robustness`` the IoU under exposure gains.
    """
    evaluator = evaluator or Evaluator(model, threshold)
    samples = discover(data)[:limit]
    scores: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    edges: dict[tuple[str, str], list[float]] = defaultdict(list)
    cover: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    by_scale: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    by_enlargement: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    exposure: dict[tuple[str, str], list[MaskScore]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    edge: dict[str, int] = defaultdict(int)
    chosen: list[str] | None = layouts
    for sample in tqdm(samples, desc=f"evaluating {data.name}", unit="img", disable=not progress):
        bands, truth = load_masked(sample)
        if chosen is None:
            chosen = list(LAYOUTS) if bands[..., 3].any() else ["rgb"]
        for name in chosen:
            layout = LAYOUTS[name]
            view = _as_layout(bands, layout)
            for method, run in evaluator.methods(layout).items():
                started = time.perf_counter()
                prediction = run(view)
                seconds[(name, method)] += time.perf_counter() - started
                scores[(name, method)].append(score(prediction, truth, view))
                edges[(name, method)].append(boundary_f1(prediction, truth))
                counted = truth != IGNORE
                cover[(name, method)].append(
                    (float((prediction[counted] > 127).mean()), float((truth[counted] > 127).mean()))
                    if counted.any() else (0.0, 0.0)
                )  # fmt: skip
                if name == chosen[0]:
                    wrong, near_edge = edge_errors(prediction, truth)
                    errors[method] += wrong
                    edge[method] += near_edge
        first = LAYOUTS[chosen[0]]
        view = _as_layout(bands, first)
        methods = evaluator.methods(first)
        for factor in scales:
            small, small_truth = shrink(view, truth, factor)
            for method, run in methods.items():
                by_scale[(f"{factor:g}", method)].append(score(run(small), small_truth, small))
        for factor in enlarge_factors:
            big, big_truth = enlarge(view, truth, factor)
            channels = from_model_bands(big, first)
            by_enlargement[(f"{factor:g}", "unet_auto")].append(
                score(evaluator.segment(channels, first), big_truth)
            )
            fixed = evaluator.segment(channels, first, evaluator.full_resolution)
            by_enlargement[(f"{factor:g}", "unet_full_resolution")].append(score(fixed, big_truth))
            for width, pipeline in evaluator.leaf_widths.items():
                leaf = evaluator.segment(channels, first, pipeline)
                by_enlargement[(f"{factor:g}", f"unet_leaf_{width:g}")].append(score(leaf, big_truth))
            baseline = next(iter(baselines_for(first).values()))
            by_enlargement[(f"{factor:g}", "baseline")].append(score(baseline(big), big_truth))
        for gain in EXPOSURE_GAINS if robustness else ():
            shifted = np.clip(view.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            for method in ("unet", "exg_otsu"):
                if method in methods:
                    exposure[(f"{gain:g}", method)].append(score(methods[method](shifted), truth, view))
    assert chosen is not None
    sweeps: dict[str, SweepTable] = {}  # only the sweeps asked for: the JSON has no others
    if scales:
        sweeps["scales"] = _iou_table(by_scale)
    if enlarge_factors:
        sweeps["enlargement"] = _iou_table(by_enlargement)
    if robustness:
        sweeps["exposure_robustness"] = _iou_table(exposure)
    return SetEvaluation(
        data=str(data),
        model=str(model),
        threshold=evaluator.threshold,
        auto_leaf_px=evaluator.config.auto_leaf_px,
        layouts={
            name: {
                method: MethodScores.model_validate(
                    {
                        **summarise(items),
                        "boundary_f1": float(np.mean(edges[(name, method)])),
                        "cover_predicted": float(np.mean([p for p, _ in cover[(name, method)]])),
                        "cover_true": float(np.mean([t for _, t in cover[(name, method)]])),
                        "seconds_per_image": seconds[(name, method)] / len(items),
                    }
                )
                for (layout_name, method), items in scores.items()
                if layout_name == name
            }
            for name in chosen
        },
        wrong_pixels_within_1px_of_edge={m: edge[m] / max(errors[m], 1) for m in errors},
        **sweeps,
    )


def _iou_table(groups: dict[tuple[str, str], list[MaskScore]]) -> SweepTable:
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for (key, method), items in groups.items():
        table[key][method] = float(summarise(items)["iou_non_black"])
    return dict(table)


def edge_errors(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """Wrong pixels, and how many of them lie within one pixel of a true vegetation edge."""
    counted = truth != IGNORE
    wrong = ((prediction > 127) != (truth > 127)) & counted
    vegetation = (truth > 127).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    near_edge = cv2.dilate(vegetation, kernel) != cv2.erode(vegetation, kernel)
    return int(wrong.sum()), int((wrong & near_edge).sum())


def _ordered(methods: list[str]) -> list[str]:
    return sorted(methods, key=lambda n: list(METHOD_LABELS).index(n) if n in METHOD_LABELS else 99)


def _sets_in_order(reports: Mapping[str, SetEvaluation]) -> list[tuple[str, SetEvaluation]]:
    """Real photos (true colour only) first, then synthetic tiles."""
    return sorted(reports.items(), key=lambda item: (len(item[1].layouts) > 1, item[0]))


def layout_table(reports: Mapping[str, SetEvaluation]) -> str:
    """One row per (set, layout): IoU (non-black) of the pipeline and each applicable baseline,
    and the pipeline's margin over the best baseline."""
    methods = ["unet", "unet_network_only", "exg_otsu", "ndvi_otsu", "difference_otsu", "green_kmeans"]
    header = "| set | layout | images | " + " | ".join(METHOD_LABELS[m] for m in methods)
    rows = [header + " | margin over best baseline |", "|---|---|---:|" + "---:|" * (len(methods) + 1)]
    for set_name, report in _sets_in_order(reports):  # layouts in their usual order
        for layout in (name for name in LAYOUTS if name in report.layouts):
            by_method = report.layouts[layout]
            cells = [f"{by_method[m].iou_non_black:.3f}" if m in by_method else "–" for m in methods]
            best = by_method[best_baseline(by_method)].iou_non_black
            margin = by_method["unet"].iou_non_black - best
            images = by_method["unet"].non_black_images
            rows.append(f"| {set_name} | {layout} | {images} | " + " | ".join(cells) + f" | {margin:+.3f} |")
    return "\n".join(rows)


def best_baseline(by_method: Mapping[str, MethodScores]) -> str:
    """The baseline with the highest IoU (non-black) among ``by_method``."""
    return max((m for m in by_method if m in BASELINES), key=lambda m: by_method[m].iou_non_black)


def edge_table(reports: Mapping[str, SetEvaluation]) -> str:
    """One row per (set, layout): boundary F1 of the pipeline and of the best baseline by IoU,
    and the mean vegetation cover each draws against the truth's."""
    rows = [
        "| set | layout | boundary F1, pipeline | boundary F1, best baseline | cover: truth "
        "| cover: pipeline | cover: best baseline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for set_name, report in _sets_in_order(reports):
        for layout in (name for name in LAYOUTS if name in report.layouts):
            by_method = report.layouts[layout]
            unet = by_method["unet"]
            best = by_method[best_baseline(by_method)]
            rows.append(
                f"| {set_name} | {layout} | {unet.boundary_f1:.3f} | {best.boundary_f1:.3f} "
                f"| {unet.cover_true:.1%} | {unet.cover_predicted:.1%} "
                f"| {best.cover_predicted:.1%} |"
            )
    return "\n".join(rows)


def markdown_table(report: SetEvaluation, layout: str = "rgb") -> str:
    """The classic table for one layout: IoU and accuracy (non-black and all), ms / image."""
    methods = report.layouts[layout]
    columns = ["IoU (non-black)", "pixel accuracy (non-black)", "IoU (all)", "pixel accuracy (all)"]
    rows = ["| method | " + " | ".join(columns) + " | ms / image |", "|---|" + "---:|" * (len(columns) + 1)]
    for name in _ordered(list(methods)):
        m = methods[name]
        values = [m.iou_non_black, m.pixel_accuracy_non_black, m.iou, m.pixel_accuracy]
        cells = " | ".join(f"{v:.3f}" for v in values)
        rows.append(f"| {METHOD_LABELS.get(name, name)} | {cells} | {1000 * m.seconds_per_image:.1f} |")
    return "\n".join(rows)


def sweep_table(table: dict[str, dict[str, float]], key_label: str, labels: dict[str, str]) -> str:
    keys = sorted(table, key=float)
    methods = [m for m in labels if any(m in table[k] for k in keys)]
    rows = [f"| {key_label} | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for method in methods:
        cells = " | ".join(f"{table[k][method]:.3f}" if method in table[k] else "–" for k in keys)
        rows.append(f"| {labels[method]} | {cells} |")
    return "\n".join(rows)


ENLARGEMENT_LABELS = {
    "unet_auto": "pipeline, automatic working resolution (the default)",
    "unet_full_resolution": "pipeline forced to full resolution",
    "baseline": "the layout's index + Otsu",
}


def enlargement_labels(table: dict[str, dict[str, float]]) -> dict[str, str]:
    """ENLARGEMENT_LABELS plus a row for each other leaf width the table holds."""
    widths = sorted({m for row in table.values() for m in row if m.startswith("unet_leaf_")},
                    key=lambda m: float(m.removeprefix("unet_leaf_")))  # fmt: skip
    labels = {m: f"pipeline, automatic, leaves scaled to {m.removeprefix('unet_leaf_')} px" for m in widths}
    return {"unet_auto": ENLARGEMENT_LABELS["unet_auto"], **labels, **ENLARGEMENT_LABELS}


def set_name(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def synthetic_name(folder: Path) -> str:
    return f"synthetic/{folder.name}"


def evaluate_all(
    model: Path,
    real: list[Path],
    synthetic: Path | None,
    *,
    scales: tuple[float, ...],
    enlarge_factors: tuple[float, ...],
    leaf_widths: tuple[float, ...] = (),
    synthetic_limit: int | None = None,
    threshold: float | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """The model card's evaluation: real folders (true colour) with the scale sweep and the
    enlargement check (also at ``leaf_widths``); the synthetic folder in every layout, with
    exposure robustness."""
    evaluator = Evaluator(model, threshold, leaf_widths=leaf_widths)
    sets: dict[str, SetEvaluation] = {}
    for folder in real:
        sets[set_name(folder)] = evaluate(model, folder, scales=scales, enlarge_factors=enlarge_factors,
                                          progress=progress, evaluator=evaluator)  # fmt: skip
    if synthetic is not None:
        sets[synthetic_name(synthetic)] = evaluate(model, synthetic, robustness=True, progress=progress,
                                             evaluator=evaluator, limit=synthetic_limit)  # fmt: skip
    return EvaluationReport(
        model=str(model),
        threshold=evaluator.threshold,
        auto_leaf_px=evaluator.config.auto_leaf_px,
        real_folders=[str(folder) for folder in real],
        synthetic_folder=str(synthetic) if synthetic else None,
        synthetic_name=synthetic_name(synthetic) if synthetic else None,
        sets=sets,
    )
