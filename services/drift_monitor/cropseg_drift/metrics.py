"""The latest drift result as Prometheus metrics, read from the store at scrape time.

The CronJob's pods are gone before any scrape, so the API process exports what they left:
the newest report (verdicts, p-values, distances, sizes, timing) and the run log (outcomes).
Reads are cached for a few seconds so frequent scrapes cost nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cropseg_core.store import BlobStore, StoreError
from cropseg_drift.lock import is_locked
from cropseg_drift.report import LOG_STREAM

log = logging.getLogger(__name__)

OUTCOMES = ("drift", "no_drift", "insufficient_data", "error")


def latest_report(store: BlobStore) -> dict[str, Any] | None:
    keys = [b.key for b in store.list_blobs("drift/reports/") if b.key.endswith("/report.json")]
    return store.get_json(max(keys)) if keys else None


class DriftCollector(Collector):
    def __init__(self, store: BlobStore, cache_s: float = 5.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cached: tuple[float, list[Metric]] = (0.0, [])

    def collect(self) -> Iterator[Metric]:
        taken, metrics = self._cached
        if time.monotonic() - taken > self.cache_s:
            try:
                metrics = self._read()
            except StoreError as e:  # keep the last good values; the store may be back next scrape
                log.warning("cannot read drift results: %s", e)
            else:
                self._cached = (time.monotonic(), metrics)
        yield from metrics

    def _read(self) -> list[Metric]:
        runs = CounterMetricFamily(
            "cropseg_drift_runs", "Drift runs by outcome (from drift/drift.log).", labels=["outcome"]
        )
        entries = self.store.read_records(LOG_STREAM)
        for outcome in OUTCOMES:
            runs.add_metric([outcome], sum(entry.get("outcome") == outcome for entry in entries))
        in_progress = GaugeMetricFamily(
            "cropseg_drift_run_in_progress", "1 while a drift run holds the lock."
        )
        in_progress.add_metric([], 1.0 if is_locked(self.store) else 0.0)
        metrics: list[Metric] = [runs, in_progress]
        if entries:
            last = GaugeMetricFamily(
                "cropseg_drift_last_run_timestamp_seconds",
                "Start of the last drift run, whatever its outcome.",
            )
            last.add_metric([], datetime.fromisoformat(entries[-1]["time"]).timestamp())
            metrics.append(last)
        report = latest_report(self.store)
        if report is not None:
            metrics.extend(self._report_metrics(report))
        return metrics

    @staticmethod
    def _report_metrics(report: dict[str, Any]) -> list[Metric]:
        success = GaugeMetricFamily(
            "cropseg_drift_last_success_timestamp_seconds",
            "Time of the newest drift report (a run that finished).",
        )
        success.add_metric([], datetime.fromisoformat(report["created_at"]).timestamp())
        duration = GaugeMetricFamily(
            "cropseg_drift_last_run_duration_seconds", "Duration of the run behind the newest report."
        )
        duration.add_metric([], float(report["duration_s"]))
        images = GaugeMetricFamily("cropseg_drift_images_analysed", "Images compared in the newest report.")
        images.add_metric([], float(report["images"]))
        predictions = GaugeMetricFamily(
            "cropseg_drift_predictions_analysed", "Predictions compared in the newest report."
        )
        predictions.add_metric([], float(report["predictions"]))
        iou = GaugeMetricFamily(
            "cropseg_drift_iou",
            "Segmentation IoU on the newest report's uploads: kind=estimated (from the model's confidence, "
            "no labels), expected (the same estimate on held-out photos of the training sources), "
            "measured (uploads with a label).",
            labels=["kind"],
        )
        performance = report.get("performance", {})
        for kind in ("estimated", "expected", "measured"):
            if performance.get(f"{kind}_iou") is not None:
                iou.add_metric([kind], float(performance[f"{kind}_iou"]))
        detected = GaugeMetricFamily(
            "cropseg_drift_detected",
            "1 when the check found drift in the newest report (check=overall: any).",
            labels=["check"],
        )
        detected.add_metric(["overall"], 1.0 if report["status"] == "drift" else 0.0)
        if performance.get("status") in ("ok", "dropped"):
            detected.add_metric(["estimated_iou"], 1.0 if performance["status"] == "dropped" else 0.0)
        p_values = GaugeMetricFamily(
            "cropseg_drift_p_value",
            "p-value per check and feature in the newest report (feature=all: smallest).",
            labels=["check", "feature"],
        )
        distances = GaugeMetricFamily(
            "cropseg_drift_distance",
            "Test statistic per check and feature in the newest report (feature=all: largest).",
            labels=["check", "feature"],
        )
        for name, check in report["detectors"].items():
            data = check["data"]
            if data["is_drift"] is None:  # insufficient data: no verdict to export
                continue
            detected.add_metric([name], 1.0 if data["is_drift"] else 0.0)
            p_values.add_metric([name, "all"], float(data["p_val"]))
            distances.add_metric([name, "all"], float(data["distance"]))
            for feature, values in data.get("features", {}).items():
                p_values.add_metric([name, feature], float(values["p_val"]))
                distances.add_metric([name, feature], float(values["distance"]))
        return [success, duration, images, predictions, iou, detected, p_values, distances]
