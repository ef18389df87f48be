"""Storage metrics beyond the HTTP ones (Prometheus naming, base units)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cropseg_core.fields import FieldCatalogue, FieldNotFoundError, JobStatus
from cropseg_core.repository import SOURCES, ImageRepository
from cropseg_core.store import BlobStore, StoreError
from cropseg_core.web.metrics import LATENCY_BUCKETS, SIZE_BUCKETS
from cropseg_storage.field_jobs import field_folders

log = logging.getLogger(__name__)

INFERENCE_OUTCOMES = ("success", "unavailable", "timeout", "rejected", "failed")
FIELD_UPLOAD_RESULTS = ("completed", "rejected", "terminated", "expired")
FIELD_JOB_STATES = ("none", *get_args(JobStatus))
"""A field's segmentation as the fields gauge labels it: ``none`` when never asked for."""
FIELD_JOBS_MAX_AGE_S = 15.0


@dataclass
class FieldJobCounts:
    """What the fields' job.json say, as of one listing of the store."""

    by_state: Tally[str] = field(default_factory=Tally)
    megapixels: float = 0.0
    seconds: float = 0.0


def count_field_jobs(fields: FieldCatalogue) -> FieldJobCounts:
    """Fields by their segmentation's state (as a reader sees it: a silent worker is failed), and
    the megapixels and seconds of the finished segmentations (the part a run segmented itself, not
    what an earlier run had done; from its claim to its end, exports included)."""
    counts = FieldJobCounts()
    for field_id, names in field_folders(fields).items():
        if "field.json" not in names:
            continue  # an upload failed half-way, or a field being deleted: not a field
        try:
            job = fields.job(field_id) if "job.json" in names else None
            if job is not None and job.status == "done" and job.started and job.finished:
                record = fields.get(field_id)
                share = (
                    (job.windows_total - job.resumed_from) / job.windows_total if job.windows_total else 0.0
                )
                counts.megapixels += record.width * record.height / 1e6 * max(share, 0.0)
                counts.seconds += max((job.finished - job.started).total_seconds(), 0.0)
        except (FieldNotFoundError, StoreError) as e:  # deleted meanwhile, or a damaged record
            log.debug("field %s left out of the job counts: %s", field_id, e)
            continue
        counts.by_state["none" if job is None else job.as_seen().status] += 1
    return counts


class FieldJobsCollector(Collector):
    """Gauges of the fields' segmentations, read from the store at scrape time: at most one
    listing per ``max_age_s`` however often Prometheus (or several) scrapes."""

    def __init__(self, max_age_s: float = FIELD_JOBS_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.fields: FieldCatalogue | None = None
        self._counts = FieldJobCounts()
        self._counted_at: float | None = None
        self._lock = threading.Lock()

    def watch(self, fields: FieldCatalogue) -> None:
        """Count the fields of this catalogue (the store is opened when the app starts)."""
        self.fields = fields

    def _current(self) -> FieldJobCounts:
        with self._lock:  # scrapes at once wait for one listing
            now = time.monotonic()
            if self.fields is not None and (
                self._counted_at is None or now - self._counted_at >= self.max_age_s
            ):
                try:
                    self._counts = count_field_jobs(self.fields)
                except StoreError as e:  # the last counts stand; the next scrape after max_age retries
                    log.warning("cannot count the fields' segmentations: %s", e)
                self._counted_at = now
            return self._counts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(FieldJobCounts()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(self._current()))

    @staticmethod
    def _families(counts: FieldJobCounts) -> list[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "cropseg_storage_fields",
            "Fields by their segmentation's state: none (never asked), queued, segmenting, done, failed "
            "(a worker silent for 10 min included), cancelled. Read from the store, at most every 15 s.",
            labels=["segmentation"],  # not "job": Prometheus's target label
        )
        for state in FIELD_JOB_STATES:
            by_state.add_metric([state], counts.by_state[state])
        megapixels = GaugeMetricFamily(
            "cropseg_storage_field_segmented_megapixels",
            "Megapixels segmented by the finished (done) segmentations of the stored fields; divided by "
            "cropseg_storage_field_segmentation_seconds: their throughput in MP/s.",
            value=counts.megapixels,
        )
        seconds = GaugeMetricFamily(
            "cropseg_storage_field_segmentation_seconds",
            "Seconds the finished (done) segmentations of the stored fields took, claim to end.",
            value=counts.seconds,
        )
        return [by_state, megapixels, seconds]


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Gauge(
            "cropseg_storage_images", "Stored images by source (recounted periodically).", ["source"],
            registry=registry,
        )  # fmt: skip
        self.image_bytes = Gauge(
            "cropseg_storage_image_bytes", "Bytes of stored images as uploaded (recounted periodically).",
            registry=registry,
        )  # fmt: skip
        self.volume_free = Gauge(
            "cropseg_storage_volume_free_bytes", "Free bytes on the data volume (filesystem backend).",
            registry=registry,
        )  # fmt: skip
        self.volume_size = Gauge(
            "cropseg_storage_volume_size_bytes", "Size of the data volume (filesystem backend).",
            registry=registry,
        )  # fmt: skip
        self.upload_size = Histogram(
            "cropseg_storage_upload_size_bytes", "Size of accepted uploads.", buckets=SIZE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.uploads = Counter(
            "cropseg_storage_uploads_total", "Accepted uploads: created, or duplicate of a stored image.",
            ["result"], registry=registry,
        )  # fmt: skip
        self.inference_requests = Counter(
            "cropseg_storage_inference_requests_total",
            "Segmentation calls to the inference service by outcome: success, unavailable (503 or "
            "unreachable), timeout, rejected (4xx), failed (5xx or malformed answer).",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "cropseg_storage_inference_duration_seconds", "Round trip of successful segmentation calls.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.service_up = Gauge(
            "cropseg_service_up", "1 when the service's last readiness check passed (status page).",
            ["service"], registry=registry,
        )  # fmt: skip
        self.dependency_up = Gauge(
            "cropseg_storage_dependency_up",
            "1 when storage's last readiness check (/readyz) found a service it needs ready; 0 while "
            "storage serves degraded without it (segmentations answer 503).",
            ["dependency"], registry=registry,
        )  # fmt: skip
        self.field_uploads = Counter(
            "cropseg_storage_field_uploads_total",
            "Resumable field (orthomosaic) uploads by how they ended: completed (stored as a field), "
            "rejected (not a GeoTIFF, unsupported, too large), terminated by the client, expired.",
            ["result"], registry=registry,
        )  # fmt: skip
        self.field_upload_bytes = Counter(
            "cropseg_storage_field_upload_received_bytes_total",
            "Bytes of field uploads written to staging (chunks, including those of uploads not completed).",
            registry=registry,
        )  # fmt: skip
        self.field_segmentations = Counter(
            "cropseg_storage_field_segmentations_requested_total",
            "Field segmentations asked for and queued (POST /api/v1/fields/{id}/segment answered 202).",
            registry=registry,
        )  # fmt: skip
        self.field_jobs = FieldJobsCollector()
        registry.register(self.field_jobs)
        for result in FIELD_UPLOAD_RESULTS:
            self.field_uploads.labels(result)
        for result in ("created", "duplicate"):
            self.uploads.labels(result)
        for outcome in INFERENCE_OUTCOMES:
            self.inference_requests.labels(outcome)

    def recount(self, repository: ImageRepository, store: BlobStore) -> None:
        """Refresh the stored-data gauges (a listing of the store: done periodically, not per scrape)."""
        for source in SOURCES:
            self.images.labels(source).set(repository.count(source))
        self.image_bytes.set(repository.stored_bytes())
        usage = store.usage()
        if usage is not None:
            self.volume_free.set(usage.free_bytes)
            self.volume_size.set(usage.total_bytes)
