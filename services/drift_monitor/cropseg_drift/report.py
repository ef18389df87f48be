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

from cropseg_core.features import PROPERTY_NAMES, ReferenceProfile
from cropseg_core.store import BlobStore, encode_json
from cropseg_drift.detectors import Current

REPORT_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z")  # ASCII digits only: \d also matches other scripts
FILE_NAME = re.compile(r"[a-z0-9_]+\.(png|html|json)")
LOG_STREAM = "drift/drift.log"
REFERENCE_COLOUR, CURRENT_COLOUR = "#2e7d32", "#c62828"


def new_report_id(now: datetime) -> str:
    """Sortable and unique per microsecond: 20261127T144100123456Z."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def report_prefix(report_id: str) -> str:
    return f"drift/reports/{report_id}/"


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


def summarise(status: str, results: dict[str, dict[str, Any]]) -> str:
    if status == "insufficient_data":
        reasons = {r["data"].get("reason", "") for r in results.values()}
        return "not enough data for a verdict: " + "; ".join(sorted(reasons))
    drifted = [
        name
        + (
            f" ({', '.join(r['data']['drifted'][:4])})"
            if r["data"].get("drifted") and name != "grey_histogram"
            else ""
        )
        for name, r in results.items()
        if r["data"]["is_drift"]
    ]
    if not drifted:
        return f"no drift in {sum(r['data']['is_drift'] is False for r in results.values())} checks"
    return f"drift in {len(drifted)} of {len(results)} checks: " + "; ".join(drifted)


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """One self-contained page: summary, a table of the checks, the plots inlined."""
    escape = html.escape
    rows = []
    for name, result in report["detectors"].items():
        data = result["data"]
        verdict = data.get("status", "")
        p_val = f"{data['p_val']:.3g}" if isinstance(data.get("p_val"), float) else "–"
        distance = f"{data['distance']:.3f}" if isinstance(data.get("distance"), float) else "–"
        detail = ", ".join(data.get("drifted", [])[:8]) or data.get("reason", "")
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{escape(result['meta']['detector'])}</td>"
            f"<td class='{escape(verdict)}'>{escape(verdict.replace('_', ' '))}</td><td>{p_val}</td>"
            f"<td>{distance}</td><td>{escape(detail)}</td></tr>"
        )
    figures = "".join(
        f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{escape(name.removesuffix('.png'))}</figcaption></figure>"
        for name, png in plots.items()
    )
    skipped = "".join(f"<li>{escape(s['id'][:12])}…: {escape(s['reason'])}</li>" for s in report["skipped"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cropseg drift report {escape(report["id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #1d2521; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #dfe5e1; padding: .4rem; text-align: left; }}
.drift {{ color: #c62828; font-weight: 600; }} .no_drift {{ color: #2e7d32; }} .insufficient_data {{ color: #8d6e00; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }} .status {{ font-size: 1.3rem; }}
</style></head><body>
<h1>Drift report {escape(report["id"])}</h1>
<p class="status {escape(report["status"])}">{escape(report["status"].replace("_", " "))}: {escape(report["summary"])}</p>
<p>{report["images"]} images and {report["predictions"]} predictions against {report["reference"]["images"]}
reference images (model {escape(report["reference"]["model_version"])}); engine {escape(report["engine"])},
p-value {report["p_value"]}; run at {escape(report["created_at"])} in {report["duration_s"]:.1f} s.</p>
<table><thead><tr><th>check</th><th>detector</th><th>verdict</th><th>p-value</th><th>distance</th><th>drifted / note</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
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
