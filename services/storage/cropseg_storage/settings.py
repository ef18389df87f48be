"""Settings of the storage service (environment variables prefixed ``STORAGE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AnyHttpUrl, Field, field_validator

from cropseg_core.settings import ServiceSettings
from cropseg_core.store import StoreSettings
from cropseg_core.web.auth import TokenSettings


class StorageSettings(ServiceSettings, TokenSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "STORAGE_"}

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` in a container)."""
    port: int = Field(default=8002, ge=1, le=65535)
    """TCP port to listen on."""
    store: StoreSettings = StoreSettings()
    """Where images, labels, masks and records live (``STORAGE_STORE__BACKEND=s3`` etc.)."""
    inference_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8001")
    """Base URL of the inference service."""
    inference_timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for one segmentation (a 40 MP image takes ~20 s on 2 cores)."""
    inference_max_connections: int = Field(default=256, ge=1)
    """Most calls to inference at once; more wait for a connection. Keep it above inference's
    ``INFERENCE_MAX_QUEUE_TILES`` so that inference, which knows its queue, is the one that
    sheds load (503 + Retry-After, passed on to the client) instead of requests piling up here."""
    drift_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8003")
    """Base URL of the drift-monitor API; the UI's drift page reads it through this service."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API from a browser (JSON list); the UI itself needs none."""
    samples_path: Path | None = Path("model/artifacts/samples")
    """Generated tiles with labels (images/, masks/, metadata.jsonl) loaded into an empty store
    on first start so the gallery and evaluation work at once; empty to skip."""
    real_photos_path: Path | None = Path("model/data/real")
    """Real field photos with masks (CC BY-SA, one folder per set with its LICENSE): a few of
    each set join the samples on first start, credited in the gallery; empty to skip."""
    thumbnail_size: int = Field(default=256, ge=32, le=1024)
    """Longest side of thumbnails, in pixels."""
    status_interval_s: float = Field(default=30.0, ge=1)
    """How often the status page checks each service's readiness."""
    status_history_days: int = Field(default=7, ge=1, le=90)
    """Days of health checks the status page summarises (uptime, incidents)."""
    stats_interval_s: float = Field(default=60.0, ge=1)
    """How often stored image counts and bytes are recounted for /metrics."""
    retry_after_s: int = Field(default=2, ge=1)
    """Retry-After sent when inference is unavailable."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM, how long in-flight requests may take before the process exits anyway."""

    @field_validator("samples_path", "real_photos_path", mode="before")
    @classmethod
    def _empty_skips(cls, value: object) -> object:
        return None if value == "" else value  # pydantic would read "" as the current folder


@lru_cache
def get_settings() -> StorageSettings:
    return StorageSettings()
