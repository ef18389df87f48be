"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from cropseg_core.web.service import from_state
from cropseg_inference.engine import SegmentationEngine
from cropseg_inference.metrics import InferenceMetrics
from cropseg_inference.settings import InferenceSettings

Engine = Annotated[SegmentationEngine, Depends(from_state("engine", SegmentationEngine))]
Metrics = Annotated[InferenceMetrics, Depends(from_state("metrics", InferenceMetrics))]
Settings = Annotated[InferenceSettings, Depends(from_state("settings", InferenceSettings))]
