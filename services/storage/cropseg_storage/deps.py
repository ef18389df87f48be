"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cropseg_core.fields import FieldCatalogue
from cropseg_core.repository import ImageRepository
from cropseg_core.web.service import from_state
from cropseg_storage.field_jobs import FieldLauncher
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


def _launcher(request: Request) -> FieldLauncher:
    """``app.state.field_launcher``: a protocol, which ``from_state`` (a class's isinstance) cannot name."""
    launcher = request.app.state.field_launcher
    if not isinstance(launcher, FieldLauncher):
        raise TypeError(f"app.state.field_launcher is {type(launcher).__name__}, not a FieldLauncher")
    return launcher


Launcher = Annotated[FieldLauncher, Depends(_launcher)]
