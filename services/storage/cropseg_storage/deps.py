"""FastAPI dependencies: what a route needs, taken from the app's state; the write token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from cropseg_core.web.errors import ForbiddenError, UnauthorizedError
from cropseg_storage.inference_client import InferenceClient
from cropseg_storage.metrics import StorageMetrics
from cropseg_storage.repository import ImageRepository
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
    if settings.api_token is None:
        return
    if not authorization:
        raise UnauthorizedError("this request changes data: send Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode(), settings.api_token.get_secret_value().encode()):
        raise ForbiddenError("the token is not valid for this service")


Repository = Annotated[ImageRepository, Depends(get_repository)]
Metrics = Annotated[StorageMetrics, Depends(get_metrics)]
Settings = Annotated[StorageSettings, Depends(get_app_settings)]
Inference = Annotated[InferenceClient, Depends(get_inference)]
WRITE = [Depends(require_token)]
