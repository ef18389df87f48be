"""FastAPI dependencies: what a route needs, taken from the app's state; the write token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from cropseg_core.repository import ImageRepository
from cropseg_core.web.auth import check_bearer
from cropseg_storage.inference_client import InferenceClient
from cropseg_storage.metrics import StorageMetrics
from cropseg_storage.settings import StorageSettings


def get_app_settings(request: Request) -> StorageSettings:
    settings: StorageSettings = request.app.state.settings
    return settings


def get_repository(request: Request) -> ImageRepository:
    repository: ImageRepository = request.app.state.repository
    return repository


def get_metrics(request: Request) -> StorageMetrics:
    metrics: StorageMetrics = request.app.state.metrics
    return metrics


def get_inference(request: Request) -> InferenceClient:
    client: InferenceClient = request.app.state.inference
    return client


def require_token(
    settings: Annotated[StorageSettings, Depends(get_app_settings)],
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` when a token is configured")
    ] = None,
) -> None:
    """Writes need ``Authorization: Bearer <token>`` when ``STORAGE_API_TOKEN`` is set."""
    check_bearer(settings.api_token, authorization)


Repository = Annotated[ImageRepository, Depends(get_repository)]
Metrics = Annotated[StorageMetrics, Depends(get_metrics)]
Settings = Annotated[StorageSettings, Depends(get_app_settings)]
Inference = Annotated[InferenceClient, Depends(get_inference)]
WRITE = [Depends(require_token)]
