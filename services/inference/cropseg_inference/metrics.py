"""Inference metrics beyond the HTTP ones (Prometheus naming, base units)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cropseg_core.segmenter import ModelInfo
from cropseg_core.web.metrics import LATENCY_BUCKETS

STAGES = ("decode", "preprocess", "queue", "infer", "postprocess", "encode")


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry, max_batch_size: int) -> None:
        self.segmentation_result = Counter(
            "cropseg_segmentation_result_total",
            "Segmentations by outcome: success; failure for any error after the request was accepted; "
            "cancelled when the client disconnected before its answer.",
            ["result"], registry=registry,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "cropseg_inference_stage_duration_seconds", "Time per request spent in each stage.",
            ["stage"], buckets=(0.001, 0.0025, *LATENCY_BUCKETS), registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "cropseg_inference_batch_size", "Tiles per ONNX Runtime call.",
            buckets=tuple(float(n) for n in range(1, max_batch_size + 1)), registry=registry,
        )  # fmt: skip
        self.batch_duration = Histogram(
            "cropseg_inference_batch_duration_seconds", "Time of one ONNX Runtime call.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "cropseg_inference_queue_depth", "Tiles waiting for the model.", registry=registry
        )
        self.rejected = Counter(
            "cropseg_inference_rejected_total", "Requests refused with 503 because the queue was full.",
            registry=registry,
        )  # fmt: skip
        self.vegetation_fraction = Histogram(
            "cropseg_vegetation_fraction", "Share of pixels predicted as vegetation, per image.",
            buckets=tuple(round(0.05 * n, 2) for n in range(1, 21)), registry=registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "cropseg_model_info",
            "The served model (always 1).",
            ["name", "version", "sha256"],
            registry=registry,
        )
        self.ready = Gauge(
            "cropseg_inference_ready", "1 once the model is loaded and warmed up.", registry=registry
        )
        for result in ("success", "failure", "cancelled"):
            self.segmentation_result.labels(result)
        for stage in STAGES:
            self.stage_duration.labels(stage)

    def set_model(self, info: ModelInfo) -> None:
        self.model_info.clear()
        self.model_info.labels(info.name, info.version, info.sha256).set(1)

    @contextlib.contextmanager
    def counting_failures(self) -> Iterator[None]:
        """Count a request that fails or whose client went away (cropseg_core.web.limits); a
        success is counted by :meth:`observe`."""
        try:
            yield
        except Exception:
            self.segmentation_result.labels("failure").inc()
            raise
        except asyncio.CancelledError:
            self.segmentation_result.labels("cancelled").inc()
            raise

    def observe(self, timings: dict[str, float], vegetation_fraction: float) -> None:
        """Record one successful segmentation."""
        self.segmentation_result.labels("success").inc()
        for stage, seconds in timings.items():
            self.stage_duration.labels(stage).observe(seconds)
        self.vegetation_fraction.observe(vegetation_fraction)
