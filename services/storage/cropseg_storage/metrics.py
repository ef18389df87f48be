"""Storage metrics beyond the HTTP ones (Prometheus naming, base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cropseg_core.repository import SOURCES, ImageRepository
from cropseg_core.store import BlobStore
from cropseg_core.web.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

INFERENCE_OUTCOMES = ("success", "unavailable", "timeout", "rejected", "failed")
FIELD_UPLOAD_RESULTS = ("completed", "rejected", "terminated", "expired")


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
