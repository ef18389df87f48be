"""One drift run (the CronJob's ``run``): window, features, checks, report, log line, exit code.

Exit codes: 0 no drift (or not enough data for a verdict), 1 drift detected (when
``fail_on_drift``), 2 error -- with the reason on stderr and in drift/drift.log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from cropseg_core.contracts import DriftReport
from cropseg_core.features import PROPERTY_LABELS, ReferenceProfile, load_reference_profile
from cropseg_core.repository import ImageRecord, ImageRepository
from cropseg_core.store import BlobStore, StoreError, open_store
from cropseg_drift.detectors import CHECK_LABELS, Current, overall_status, run_checks
from cropseg_drift.extraction import extract
from cropseg_drift.lock import RunLockedError, run_lock
from cropseg_drift.performance import estimate_performance
from cropseg_drift.predictions import newest_predictions
from cropseg_drift.reference import describe, load_reference
from cropseg_drift.report import (
    LOG_STREAM,
    format_p_value,
    make_plots,
    new_report_id,
    performance_text,
    summarise,
    write_report,
)
from cropseg_drift.settings import DriftSettings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    status: str
    """drift, no_drift, insufficient_data or error."""
    report_id: str | None
    message: str
    report: dict[str, Any] | None = None


def _window(repository: ImageRepository, settings: DriftSettings, now: datetime) -> list[ImageRecord]:
    """The newest ``window_images`` images of the source in the checked layout, no older than
    ``window_hours``."""
    oldest = now - timedelta(hours=settings.window_hours) if settings.window_hours else None
    chosen: list[ImageRecord] = []
    cursor = None
    while len(chosen) < settings.window_images:
        page, cursor = repository.page(limit=min(100, settings.window_images - len(chosen)), cursor=cursor,
                                       source=settings.source)  # fmt: skip
        for record in page:
            if oldest is not None and record.created_at < oldest:
                return chosen
            if record.layout == settings.layout:
                chosen.append(record)
        if cursor is None:
            break
    return chosen


def _predictions(store: BlobStore, settings: DriftSettings, now: datetime) -> list[dict[str, Any]]:
    """The newest prediction record of each of the newest images of the source, one per image."""
    oldest = now - timedelta(hours=settings.window_hours) if settings.window_hours else None
    wanted = (settings.source, settings.layout)
    chosen: list[dict[str, Any]] = []
    for record in newest_predictions(
        store, lambda r: (r.get("source", "upload"), r.get("layout", "rgb")) == wanted
    ):
        if len(chosen) >= settings.window_images:
            break
        if oldest is not None and datetime.fromisoformat(record["created_at"]) < oldest:
            break
        chosen.append(record)
    return chosen


def _image_bytes(
    repository: ImageRepository, records: list[ImageRecord], unreadable: list[dict[str, str]]
) -> Iterator[tuple[str, bytes, str]]:
    for record in records:
        try:
            yield record.id, repository.image_bytes(record), record.layout
        except StoreError as e:  # deleted meanwhile, or the backend failed for this one
            unreadable.append({"id": record.id, "reason": str(e)})


def execute(
    settings: DriftSettings,
    profile: ReferenceProfile,
    store: BlobStore,
    *,
    progress: bool = False,
    report_id: str | None = None,
) -> RunResult:
    """The run itself, under the lock; raises RunLockedError, StoreError."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    report_id = report_id or new_report_id(now)
    with run_lock(store, settings.lock_ttl_s):
        profile = load_reference(profile, store, settings.layout)
        repository = ImageRepository(store, settings.image_limits)
        records = _window(repository, settings, now)
        unreadable: list[dict[str, str]] = []
        features = extract(
            _image_bytes(repository, records, unreadable),
            len(records),
            workers=settings.workers,
            progress=progress,
        )
        features.skipped.extend(unreadable)
        extracted = time.perf_counter()
        for skipped in features.skipped:
            log.warning("skipping image %s: %s", skipped["id"], skipped["reason"])
        predictions = _predictions(store, settings, now)
        fractions = np.array([float(record["vegetation_fraction"]) for record in predictions], np.float32)
        current = Current(features, fractions)
        results = run_checks(profile, current, settings)
        performance = estimate_performance(profile, predictions, repository, settings)
        checked = time.perf_counter()
        status = overall_status(results)
        report: dict[str, Any] = {
            "id": report_id,
            "created_at": now.isoformat(),
            "status": status,
            "summary": summarise(status, results, settings.layout, profile.meta.get("kind") == "chosen"),
            "engine": settings.engine,
            "p_value": settings.p_value,
            "images": len(features.ids),
            "predictions": len(current.predicted_fractions),
            "skipped": features.skipped,
            "window": {
                "images": settings.window_images,
                "hours": settings.window_hours,
                "source": settings.source,
                "layout": settings.layout,
            },
            "reference": {
                "kind": profile.meta.get("kind", "training"),
                "images": len(profile.image_names),
                "sources": profile.source_counts(),
                "text": describe(profile),
                "model_name": profile.meta.get("model_name", ""),
                "model_version": profile.meta.get("model_version", ""),
            },
            "detectors": results,
            "performance": performance,
        }
        performance["text"] = performance_text(performance)
        plots = make_plots(profile, current, results)
        report["plots"] = [
            {
                "name": name.removesuffix(".png"),
                "file": name,
                "url": f"/api/v1/drift/reports/{report_id}/files/{name}",
            }
            for name in plots
        ]
        report["links"] = {
            "self": f"/api/v1/drift/reports/{report_id}",
            "html": f"/api/v1/drift/reports/{report_id}/files/report.html",
        }
        report["duration_s"] = round(time.perf_counter() - started, 3)
        report["timings_s"] = {
            "read_and_features": round(extracted - started, 3),
            "checks": round(checked - extracted, 3),
            "plots": round(time.perf_counter() - checked, 3),
        }
        DriftReport.model_validate(report)  # the contract the API serves it under; raises before writing
        write_report(store, report, plots, current, features.ids)
    exit_code = EXIT_DRIFT if status == "drift" and settings.fail_on_drift else EXIT_OK
    return RunResult(exit_code, status, report_id, report["summary"], report)


def run(
    settings: DriftSettings, *, progress: bool = False, report_id: str | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> RunResult:  # fmt: skip
    """Run once and record the outcome in drift/drift.log; errors become exit code 2, never a crash."""
    started = time.time()
    store: BlobStore | None = None
    try:
        profile = load_reference_profile(settings.reference_path)
        store = open_store(settings.store)
        result = execute(settings, profile, store, progress=progress, report_id=report_id)
    except (ValueError, StoreError, RunLockedError, OSError) as e:
        result = RunResult(EXIT_ERROR, "error", None, str(e))
    except Exception as e:  # a bug must still exit 2 ("error"), never 1 ("drift")
        log.exception("drift run failed unexpectedly")
        result = RunResult(EXIT_ERROR, "error", None, f"unexpected error: {type(e).__name__}: {e}")
    if store is not None:
        entry = {
            "time": datetime.fromtimestamp(started, UTC).isoformat(),
            "outcome": result.status,
            "exit_code": result.exit_code,
            "report_id": result.report_id,
            "duration_s": round(time.time() - started, 3),
            "message": result.message,
        }
        try:
            store.append_record(LOG_STREAM, entry)
        except StoreError as e:
            log.error("cannot append to %s: %s", LOG_STREAM, e)
    if on_result:
        on_result(result)
    return result


def summary_table(result: RunResult) -> str:
    """What ``kubectl logs`` on the CronJob's pod shows: the verdict in words, one line per check."""
    if result.report is None:
        return f"drift run failed: {result.message}\n"
    report = result.report
    lines = [
        f"{report['status'].upper().replace('_', ' ')}: {report['summary']}",
        report["performance"]["text"],
        "",
    ]
    lines.append(f"{'check':<30}{'detector':<17}{'verdict':<19}{'p-value':>9}{'distance':>10}  changed")
    for name, check in report["detectors"].items():
        data = check["data"]
        distance = f"{data['distance']:.3f}" if isinstance(data.get("distance"), float) else "-"
        drifted = ", ".join(PROPERTY_LABELS.get(n, n) for n in data.get("drifted", [])[:5])
        lines.append(
            f"{CHECK_LABELS.get(name, name):<30}{check['meta']['detector']:<17}{data['status']:<19}"
            f"{format_p_value(data.get('p_val')):>9}{distance:>10}  {drifted or data.get('reason', '')}"
        )
    skipped = len(report["skipped"])
    counts = f"{report['images']} images, {report['predictions']} predictions, {skipped} skipped"
    lines.append(f"\n{counts}; reference: {report['reference']['text']}")
    lines.append(f"report {report['id']} ({report['duration_s']:.1f} s)")
    return "\n".join(lines) + "\n"
