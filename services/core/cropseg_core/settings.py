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


class ServiceSettings(BaseSettings):
    """Settings every service shares; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of log records written to stderr."""
    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per line (for log collectors), ``text`` is for people."""
    image_limits: ImageLimits = ImageLimits()
    """Limits for decoding untrusted images (``<PREFIX>IMAGE_LIMITS__MAX_PIXELS`` etc.)."""

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
