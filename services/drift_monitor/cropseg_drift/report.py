"""A run's report: JSON, plots like the seed's figures, a self-contained HTML page.

    drift/reports/<id>/report.json      written last: a report exists once this file does
    drift/reports/<id>/*.png            reference vs current histogram and CDF per drifted feature
    drift/reports/<id>/report.html      everything above in one file (images inlined)
    drift/features/<id>-features.npz    the features of this run, for comparisons over time
    drift/drift.log                     one record per run (outcome, status, report id)

Every file is written atomically by the store, and report.json only after the others, so
a reader never sees a half report.
"""

from __future__ import annotations

import base64
import html
import io
import re
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a CronJob
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cropseg_core.errors import ClientError, NotFoundError
from cropseg_core.features import PROPERTY_LABELS, PROPERTY_NAMES, ReferenceProfile
from cropseg_core.store import BlobNotFoundError, BlobStore, encode_json
from cropseg_drift.detectors import CHECK_LABELS, Current

REPORT_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z")  # ASCII digits only: \d also matches other scripts
FILE_NAME = re.compile(r"[a-z0-9_]+\.(png|html|json)")
LOG_STREAM = "drift/drift.log"
REFERENCE_COLOUR, CURRENT_COLOUR = "#2e7d32", "#c62828"


def new_report_id(now: datetime) -> str:
    """Sortable and unique per microsecond: 20261127T144100123456Z."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def report_prefix(report_id: str) -> str:
    return f"drift/reports/{report_id}/"


def read_report(store: BlobStore, report_id: str) -> dict[str, Any]:
    if not REPORT_ID.fullmatch(report_id):
        raise ClientError(f"invalid report id {report_id!r}: ids look like 20261127T144100123456Z")
    try:
        report: dict[str, Any] = store.get_json(report_prefix(report_id) + "report.json")
    except BlobNotFoundError as e:
        raise NotFoundError(f"no drift report {report_id}") from e
    return report


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def distribution_figure(name: str, reference: np.ndarray, current: np.ndarray, p_val: float) -> Figure:
    """Histogram and empirical CDF of one feature, reference against current. The feature's name
    is the figure's title; the panels' own titles stay short so that nothing overlaps."""
    figure, (density, cdf) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    bins = np.histogram_bin_edges(np.concatenate([reference, current]), bins=30)
    for values, colour, label in (
        (reference, REFERENCE_COLOUR, "reference"),
        (current, CURRENT_COLOUR, "current"),
    ):
        density.hist(
            values, bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} (n={len(values)})"
        )
        ordered = np.sort(values)
        cdf.step(
            ordered, np.arange(1, len(ordered) + 1) / len(ordered), color=colour, where="post", label=label
        )
    figure.suptitle(name.replace("_", " "))
    density.set_title("distribution", fontsize=10)
    cdf.set_title(f"cumulative (KS p = {p_val:.2g})", fontsize=10)
    density.legend(fontsize=8)
    cdf.legend(fontsize=8)
    return figure


def grey_histogram_figure(reference: np.ndarray, current: np.ndarray) -> Figure:
    """The seed's figure: average grey-level histogram and its CDF, reference against current."""
    figure, (bars, cdf) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    levels = np.arange(256)
    for histograms, colour, label in (
        (reference, REFERENCE_COLOUR, "reference"),
        (current, CURRENT_COLOUR, "current"),
    ):
        mean = histograms.mean(axis=0)
        bars.plot(levels, mean, color=colour, label=label)
        cdf.plot(levels, np.cumsum(mean), color=colour, label=label)
    bars.set_title("average grey-level histogram", fontsize=10)
    cdf.set_title("cumulative", fontsize=10)
    bars.set_xlabel("grey level")
    cdf.set_xlabel("grey level")
    bars.legend(fontsize=8)
    return figure


def importance_figure(importances: dict[str, float]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.2), layout="constrained")
    names = list(importances)[::-1]
    axis.barh([n.replace("_", " ") for n in names], [importances[n] for n in names], color=CURRENT_COLOUR)
    axis.set_title("what gave the current images away (domain classifier)", fontsize=10)
    return figure


def make_plots(
    profile: ReferenceProfile, current: Current, results: dict[str, dict[str, Any]]
) -> dict[str, bytes]:
    """The overview histogram always; a distribution plot per drifted feature."""
    plots: dict[str, bytes] = {}
    if len(current.images.ids):
        plots["grey_histogram.png"] = _png(
            grey_histogram_figure(profile.grey_histograms, current.images.histograms)
        )
    properties = results.get("image_properties", {}).get("data", {})
    for name, feature in properties.get("features", {}).items():
        if feature["is_drift"]:
            index = PROPERTY_NAMES.index(name)
            plots[f"{name}.png"] = _png(
                distribution_figure(
                    name, profile.properties[:, index], current.images.properties[:, index], feature["p_val"]
                )
            )
    fraction = results.get("prediction_vegetation_fraction", {}).get("data", {})
    if fraction.get("is_drift"):
        plots["predicted_vegetation_fraction.png"] = _png(
            distribution_figure(
                "predicted vegetation fraction",
                profile.predicted_vegetation_fraction,
                current.predicted_fractions,
                fraction["p_val"],
            )
        )
    dataset = results.get("dataset", {}).get("data", {})
    if dataset.get("is_drift"):
        plots["dataset_importances.png"] = _png(importance_figure(dataset["importances"]))
    return plots


# What a shifted property most likely means, and what to do about it: the report's first sentence.
_ADVICE = {
    "exposure": "the exposure changed: check the camera's exposure settings or the light at flight time",
    "colour": "the colours changed: check the sensor layout the images were uploaded as (a colour-infrared "
    "file declared rgb looks like this), or a crop or season the model has not seen",
    "compression": "the images are more heavily compressed: upload the camera's originals or a lossless "
    "export",
    "blur": "the images are blurrier: check focus and motion blur (flight speed, shutter time)",
    "coverage": "more of each image lies outside the field: crop orthomosaic edges before uploading",
    "predictions": "the model finds a different amount of vegetation than on its training images: a new "
    "growth stage or crop; check a few masks, and label and retrain if they are wrong",
    "look": "the overall look of the images changed",
}
# The likely cause of a property moving (up, down); None: that direction says nothing clear.
_CAUSE: dict[str, tuple[str | None, str | None]] = {
    "brightness": ("exposure", "exposure"),
    "rms_contrast": ("exposure", "exposure"),
    "clipped_fraction": ("exposure", "exposure"),
    "red_relative_intensity": ("colour", "colour"),
    "green_relative_intensity": ("colour", "colour"),
    "blue_relative_intensity": ("colour", "colour"),
    "jpeg_blockiness": ("compression", None),
    "sharpness": ("exposure", "blur"),  # the Laplacian's variance grows with contrast
    "detail": (None, "blur"),
    "black_fraction": ("coverage", None),
}


def describe_changes(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """What changed, in words ("brightness up 52%"), and the likely causes, most telling first."""
    changes, causes = [], []
    features = results.get("image_properties", {}).get("data", {}).get("features", {})
    drifted = sorted((f for f in features.items() if f[1]["is_drift"]), key=lambda f: -f[1]["distance"])
    for name, feature in drifted:  # the largest change first
        reference, current = feature["reference_mean"], feature["current_mean"]
        up = current > reference
        change = f" {abs(current - reference) / abs(reference):.0%}" if reference else ""
        changes.append(f"{PROPERTY_LABELS[name]} {'up' if up else 'down'}{change}")
        cause = _CAUSE[name][0 if up else 1]
        if cause:
            causes.append(cause)
    fraction = results.get("prediction_vegetation_fraction", {}).get("data", {})
    if fraction.get("is_drift"):
        changes.append(
            f"predicted vegetation cover {fraction['reference_mean']:.0%} -> {fraction['current_mean']:.0%}"
        )
        causes.append("predictions")
    elif results.get("prediction_has_vegetation", {}).get("data", {}).get("is_drift"):
        causes.append("predictions")
    if not causes:
        causes.append("look")
    return changes, list(dict.fromkeys(causes))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def performance_text(performance: dict[str, Any]) -> str:
    """One sentence on the label-free IoU estimate (and the measured IoU where labels exist)."""
    measured = performance.get("measured_iou")
    labelled = (
        f" Measured on {plural(performance['labelled_images'], 'labelled upload')}: {measured:.2f}."
        if measured is not None
        else ""
    )
    if performance["status"] in ("unavailable", "insufficient_data"):
        return f"No IoU estimate: {performance['reason']}.{labelled}"
    estimate, expected = performance["estimated_iou"], performance["expected_iou"]
    text = (f"Estimated IoU without labels: {estimate:.2f} on {performance['images']} uploads "
            f"(held-out photos of the training sources: {expected:.2f}).")  # fmt: skip
    if performance["status"] == "dropped":
        text += (" The model is likely doing worse on these uploads: check a few masks; label and "
                 "retrain if they are wrong.")  # fmt: skip
    return text + labelled


def summarise(
    status: str, results: dict[str, dict[str, Any]], layout: str = "rgb", chosen_reference: bool = False
) -> str:
    """The report's first sentence: what changed, what it likely means, what to do."""
    against = (
        "the uploads chosen as the reference" if chosen_reference else "the images the model learned from"
    )
    if status == "insufficient_data":
        have = min(r["meta"]["samples"] for r in results.values())
        need = max(r["data"].get("samples_needed", 0) for r in results.values())
        return (
            f"Not enough {layout} images for a verdict yet: {have} in the window, at least {need} needed "
            f"({need - have} more)."
        )
    checked = sum(r["data"]["is_drift"] is not None for r in results.values())
    if status == "no_drift":
        return f"Recent {layout} uploads look like {against} ({checked} checks agree)."
    changes, causes = describe_changes(results)
    drifted = sum(r["data"]["is_drift"] is True for r in results.values())
    what = f": {', '.join(changes[:4])}" if changes else ""
    advice = "; ".join(_ADVICE[cause] for cause in causes[:2])
    return (
        f"Recent {layout} uploads differ from {against}{what}. Likely {advice}. "
        f"({drifted} of {checked} checks found a change.)"
    )


def format_p_value(value: object) -> str:
    """A p-value as a short number that does not wrap: 0.042, 3.1e-05, <1e-300."""
    if not isinstance(value, float):
        return "–"
    if value >= 0.001:
        return f"{value:.3f}"
    return f"{value:.1e}" if value > 0 else "<1e-300"


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """One self-contained page: summary, a table of the checks, the plots inlined."""
    escape = html.escape
    rows = []
    for name, result in report["detectors"].items():
        data = result["data"]
        verdict = data.get("status", "")
        p_val = format_p_value(data.get("p_val"))
        distance = f"{data['distance']:.3f}" if isinstance(data.get("distance"), float) else "–"
        detail = ", ".join(PROPERTY_LABELS.get(n, n) for n in data.get("drifted", [])[:8]) or data.get(
            "reason", ""
        )
        rows.append(
            f"<tr><td>{escape(CHECK_LABELS.get(name, name))}</td><td>{escape(result['meta']['detector'])}</td>"
            f"<td class='{escape(verdict)}'>{escape(verdict.replace('_', ' '))}</td><td class='number'>{p_val}</td>"
            f"<td>{distance}</td><td>{escape(detail)}</td></tr>"
        )
    figures = "".join(
        f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{escape(name.removesuffix('.png'))}</figcaption></figure>"
        for name, png in plots.items()
    )
    skipped = "".join(f"<li>{escape(s['id'][:12])}…: {escape(s['reason'])}</li>" for s in report["skipped"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cropseg drift report {escape(report["id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #1d2521; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #dfe5e1; padding: .4rem; text-align: left; }} .number {{ white-space: nowrap; }}
.drift {{ color: #c62828; font-weight: 600; }} .no_drift {{ color: #2e7d32; }} .insufficient_data {{ color: #8d6e00; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }} .scroll {{ overflow-x: auto; }} h1 {{ overflow-wrap: anywhere; }} .status {{ font-size: 1.3rem; }}
</style></head><body>
<h1>Drift report {escape(report["id"])}</h1>
<p class="status {escape(report["status"])}">{escape(report["status"].replace("_", " "))}: {escape(report["summary"])}</p>
<p>{report["images"]} images and {report["predictions"]} predictions against the reference:
{escape(report["reference"]["text"])}; engine {escape(report["engine"])},
p-value {report["p_value"]}; run at {escape(report["created_at"])} in {report["duration_s"]:.1f} s.</p>
<p>{escape(report["performance"]["text"])}</p>
<div class="scroll"><table><thead><tr><th>check</th><th>detector</th><th>verdict</th><th>p-value</th><th>distance</th><th>drifted / note</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></div>
{figures}
{f"<h2>Skipped images</h2><ul>{skipped}</ul>" if skipped else ""}
</body></html>
"""


def write_report(
    store: BlobStore, report: dict[str, Any], plots: dict[str, bytes], current: Current, image_ids: list[str]
) -> None:
    """Features, plots and HTML first, report.json last (the commit)."""
    prefix = report_prefix(report["id"])
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image_ids=np.array(image_ids),
        grey_histograms=current.images.histograms,
        properties=current.images.properties,
        property_names=np.array(PROPERTY_NAMES),
        predicted_vegetation_fraction=current.predicted_fractions,
    )
    store.put(f"drift/features/{report['id']}-features.npz", buffer.getvalue())
    for name, png in plots.items():
        store.put(prefix + name, png)
    store.put(prefix + "report.html", render_html(report, plots).encode())
    store.put(prefix + "report.json", encode_json(report))
