"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from cropseg_core.fields import FieldCatalogue
from cropseg_core.repository import ImageRepository
from cropseg_core.web.service import from_state
from cropseg_storage.inference_client import InferenceClient
from cropseg_storage.metrics import StorageMetrics
from cropseg_storage.settings import StorageSettings
from cropseg_storage.staging import UploadStaging
from cropseg_storage.status import StatusMonitor

Repository = Annotated[ImageRepository, Depends(from_state("repository", ImageRepository))]
Metrics = Annotated[StorageMetrics, Depends(from_state("metrics", StorageMetrics))]
Settings = Annotated[StorageSettings, Depends(from_state("settings", StorageSettings))]
Inference = Annotated[InferenceClient, Depends(from_state("inference", InferenceClient))]
Monitor = Annotated[StatusMonitor, Depends(from_state("status_monitor", StatusMonitor))]
Staging = Annotated[UploadStaging, Depends(from_state("field_staging", UploadStaging))]
Fields = Annotated[FieldCatalogue, Depends(from_state("fields", FieldCatalogue))]
