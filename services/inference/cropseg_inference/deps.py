"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from fastapi import Request

from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings


def get_engine(request: Request) -> SegmentationEngine:
    engine: SegmentationEngine = request.app.state.engine
    return engine


def get_metrics(request: Request) -> InferenceMetrics:
    metrics: InferenceMetrics = request.app.state.metrics
    return metrics


def get_app_settings(request: Request) -> InferenceSettings:
    settings: InferenceSettings = request.app.state.settings
    return settings
