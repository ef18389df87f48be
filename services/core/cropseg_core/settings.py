"""Typed settings shared by every service.

Each service subclasses :class:`ServiceSettings` with its own env prefix (``INFERENCE_``,
``STORAGE_``, ``DRIFT_``) and reaches it through a cached ``get_settings()``. Unsafe values
are refused at start-up by validators instead of being warned about.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Pillow refuses anything above twice this many pixels on its own; our configurable limit
# must stay below it so that our clear error fires first (see imaging.decode_image).
PIXEL_CEILING = 200_000_000


class ImageLimits(BaseModel):
    """Limits applied to every untrusted image before and while it is decoded."""

    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    """Largest encoded image accepted, in bytes."""
    max_pixels: int = Field(default=40_000_000, gt=0, le=PIXEL_CEILING)
    """Largest decoded image accepted, width x height (a 4000x3000 drone photo is 12 MP)."""


class ConnectionLimits(BaseModel):
    """What one client may hold of a service: time to send its headers and body, connections,
    and the bytes of request bodies held at once (``<PREFIX>CONNECTIONS__HEADER_TIMEOUT_S`` etc.)."""

    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """The request line and headers must arrive within this many seconds of the request's first
    byte (of the connection, for its first request), or the client gets 408 and is disconnected."""
    body_idle_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Longest pause between two parts of a request body before 408."""
    body_grace_s: float = Field(default=30.0, ge=0, le=600)
    """After this many seconds a body must have averaged ``body_min_rate`` bytes a second."""
    body_min_rate: int = Field(default=16 * 1024, ge=0)
    """Slowest accepted average upload rate, bytes a second (128 kbit/s, far below a rural uplink)."""
    max_connections: int = Field(default=512, ge=1)
    """Open connections (or requests in progress) beyond which new requests get 503 (probes and
    ``/metrics`` excepted)."""
    max_connections_per_client: int = Field(default=256, ge=1)
    """Open connections of one client address beyond which its new connections get 503 (behind
    a proxy the proxy is one client: keep it above the proxy's connections to the pod)."""
    max_body_bytes_in_flight: int | None = Field(default=None, gt=0)
    """Bytes of request bodies being received or processed at once (a body counts with its
    Content-Length from its first read to its response); beyond it requests get 503 +
    Retry-After. Default: twice the largest body the service accepts."""


class MemoryLimits(BaseModel):
    """The process's memory budget: every decode, picture and JSON parse reserves its estimated
    memory from it before allocating (``<PREFIX>MEMORY__LIMIT_MIB`` etc.)."""

    limit_mib: int | None = Field(default=None, gt=0)
    """The memory limit the process runs under. Default: the container's (cgroup ``memory.max``),
    else the chart's default limit for the service."""
    budget_share: float = Field(default=0.75, gt=0, le=0.95)
    """Share of the limit the process may reach: requests reserve from it what is left above
    the memory the process holds once started."""
    wait_s: float = Field(default=5.0, ge=0, le=600)
    """How long a request waits for memory others hold before it gets 503 + Retry-After."""


class ServiceSettings(BaseSettings):
    """Settings every service shares; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of log records written to stderr."""
    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per line (for log collectors), ``text`` is for people."""
    image_limits: ImageLimits = ImageLimits()
    """Limits for decoding untrusted images (``<PREFIX>IMAGE_LIMITS__MAX_PIXELS`` etc.)."""
    connections: ConnectionLimits = ConnectionLimits()
    """Timeouts and limits of clients' connections and request bodies."""
    memory: MemoryLimits = MemoryLimits()
    """The per-process memory budget large requests reserve from."""

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> ServiceSettings:
        # A byte limit far below what the pixel limit implies would reject legal images with a
        # confusing "too large" error; 1 byte per 100 pixels is below any real PNG/JPEG ratio.
        if self.image_limits.max_bytes * 100 < self.image_limits.max_pixels:
            raise ValueError(
                "image_limits.max_bytes is too small for image_limits.max_pixels: "
                "raise max_bytes or lower max_pixels"
            )
        return self
