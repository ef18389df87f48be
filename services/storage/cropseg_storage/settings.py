"""Settings of the storage service (environment variables prefixed ``STORAGE_``)."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, BaseModel, Field, field_validator, model_validator

from cropseg_core.settings import ServiceSettings
from cropseg_core.store import StoreSettings
from cropseg_core.web.auth import TokenSettings

GIB = 1024**3
MIB = 1024**2


class FieldUploadSettings(BaseModel):
    """Resumable uploads of whole orthomosaics (``STORAGE_FIELDS__MAX_BYTES`` etc.)."""

    staging_path: Path | None = None
    """Folder of uploads in progress. Default: ``.field-uploads`` in the data folder (filesystem
    store: the shared volume, so any replica can take the next chunk), else a folder in the
    system's temp folder (S3 store: give each replica's clients sticky sessions, or a shared
    volume here)."""
    max_bytes: int = Field(default=2 * GIB, gt=0)
    """Largest GeoTIFF accepted, in bytes (Tus-Max-Size)."""
    max_chunk_bytes: int = Field(default=32 * MIB, ge=MIB)
    """Largest body of one PATCH: clients send the file in chunks of at most this (tus-js-client's
    ``chunkSize``). A chunk is counted in the service's bytes of bodies in flight."""
    max_pixels: int = Field(default=1_000_000_000, gt=0)
    """Largest raster accepted, width x height (a 25,000 x 25,000 orthomosaic is 625 MP)."""
    max_receiving: int = Field(default=4, ge=1)
    """Chunks received at once by one process; more get 503 + Retry-After (clients retry)."""
    expire_after_h: float = Field(default=24.0, gt=0)
    """An upload not completed this many hours after it was created is deleted."""
    map_tiles: str | None = None
    """A basemap under the fields' maps: an XYZ tile URL template such as
    ``https://tile.openstreetmap.org/{z}/{x}/{y}.png`` (its host is added to the page's
    Content-Security-Policy). Unset, the maps need no network: the field alone, on grey."""
    map_attribution: str = ""
    """The basemap's credit, shown on the map (e.g. ``© OpenStreetMap contributors``)."""
    worker_cronjob: str = "cropseg-field-worker"
    """In a cluster, each segmentation is a Job created from this suspended CronJob of the chart
    (in the pod's namespace); elsewhere a local worker process polls the store for queued jobs."""

    @field_validator("map_tiles")
    @classmethod
    def _tile_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"map_tiles must be an http(s) URL template, got {value!r}")
        if not all(part in value for part in ("{z}", "{x}", "{y}")):
            raise ValueError(
                "map_tiles must hold {z}, {x} and {y}, e.g. https://host/{z}/{x}/{y}.png, "
                f"got {value!r}"
            )
        return value

    @property
    def map_tiles_origin(self) -> str | None:
        """Where the basemap's tiles come from (``scheme://host[:port]``), for the page's policy."""
        if self.map_tiles is None:
            return None
        parsed = urlsplit(self.map_tiles)
        return f"{parsed.scheme}://{parsed.netloc}"


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
    fields: FieldUploadSettings = FieldUploadSettings()
    """Uploads of whole orthomosaics (fields) from the browser."""

    def field_staging_path(self) -> Path:
        """Where field uploads in progress are kept (see :attr:`FieldUploadSettings.staging_path`)."""
        if self.fields.staging_path is not None:
            return self.fields.staging_path
        if self.store.backend == "filesystem":
            return self.store.path / ".field-uploads"  # hidden: never a key of the store
        return Path(tempfile.gettempdir()) / "cropseg-field-uploads"

    @model_validator(mode="after")
    def _chunk_fits_body_budget(self) -> Self:
        budget = self.connections.max_body_bytes_in_flight
        if budget is not None and budget < self.fields.max_chunk_bytes:
            raise ValueError(
                f"connections.max_body_bytes_in_flight ({budget}) is below fields.max_chunk_bytes "
                f"({self.fields.max_chunk_bytes}): no field upload chunk could ever be received"
            )
        return self

    @field_validator("samples_path", "real_photos_path", mode="before")
    @classmethod
    def _empty_skips(cls, value: object) -> object:
        return None if value == "" else value  # pydantic would read "" as the current folder


@lru_cache
def get_settings() -> StorageSettings:
    return StorageSettings()
