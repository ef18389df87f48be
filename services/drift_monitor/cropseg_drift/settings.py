"""Settings of the drift monitor (environment variables prefixed ``DRIFT_``), for both commands."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cropseg_core.bands import get_layout
from cropseg_core.settings import ServiceSettings
from cropseg_core.store import StoreSettings
from cropseg_core.web.auth import TokenSettings

Engine = Literal["alibi", "scipy"]


class DriftSettings(ServiceSettings, TokenSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "DRIFT_"}

    store: StoreSettings = StoreSettings()
    """The data storage writes (``DRIFT_STORE__PATH``: the shared volume); reports go under drift/."""
    reference_path: Path = Path("model/artifacts/reference_profile.npz")
    """Reference profile shipped with the model (the image bakes it in)."""
    engine: Engine = "alibi"
    """``alibi`` (Alibi Detect, Business Source License) or ``scipy`` (the same tests, BSD/MIT)."""
    p_value: float = Field(default=0.005, gt=0, lt=1)
    """Significance of a run, split over the checks (Bonferroni) when ``split_p_value_over_checks``;
    feature-wise checks split their share over their features. 0.005 (the seed used 0.01 per
    test): measured 4 % false alarms on windows of 20 held-out photos, 0 % on 50, every tested
    shift still found (docs/drift.md, benchmarks/drift_error_rates.py)."""
    split_p_value_over_checks: bool = True
    """Bonferroni over the five checks as well, so that ``p_value`` bounds the false alarms of
    the whole run, not of each check (chosen from benchmarks/drift_error_rates.py; docs/drift.md)."""
    window_images: int = Field(default=500, ge=1)
    """Compare at most the newest this many images (and as many prediction records)."""
    window_hours: float | None = Field(default=None, gt=0)
    """Only images uploaded within this many hours (none: no age limit)."""
    source: Literal["upload", "sample"] = "upload"
    """Which images to check: user uploads (default) or the seeded samples."""
    layout: str = "rgb"
    """Which sensor layout's images to check, against that layout's reference rows (a field
    flown with a CIR camera looks nothing like an RGB one: one CronJob per layout in use)."""
    min_samples: int = Field(default=30, ge=5)
    """Fewer images (or predictions) than this give ``insufficient_data`` instead of a verdict."""
    iou_drop: float = Field(default=0.05, gt=0, lt=1)
    """Report a drop (and raise CropsegEstimatedIoUDrop) when the label-free IoU estimate of the
    window is this far below what it gives on the held-out validation photos."""
    vegetation_presence: float = Field(default=0.01, ge=0, lt=1)
    """An image "has vegetation" when its predicted vegetation fraction is above this."""
    classifier_folds: int = Field(default=5, ge=2, le=20)
    """Cross-validation folds of the domain classifier (multivariate check)."""
    classifier_trees: int = Field(default=100, ge=10, le=1000)
    """Trees of the domain classifier's random forest."""
    classifier_min_distance: float = Field(default=0.4, ge=0, le=1)
    """The domain classifier reports drift only when it also tells the two sets apart by at least
    this much (KS distance of its out-of-fold probabilities): photos of other days and plots of the
    training sources reach 0.15-0.27, every measured real shift 0.98-1.0 (docs/drift.md)."""
    classifier_max_samples: int = Field(default=2000, ge=100)
    """The domain classifier learns from at most this many current images (a seeded random
    subset): against a few hundred reference images, more only costs time."""
    seed: int = 0
    """Seed of the domain classifier's folds and forest: the same data gives the same verdict."""
    fail_on_drift: bool = True
    """``run`` exits 1 when drift is detected (the seed's M6 improvement), so the Job shows failed."""
    workers: int = Field(default=0, ge=0)
    """Processes extracting features; 0 = one per CPU."""
    lock_ttl_s: float = Field(default=3600.0, gt=0)
    """A run's lock older than this belongs to a run that died and is taken over."""

    host: str = "127.0.0.1"
    """``serve``: address to listen on."""
    port: int = Field(default=8003, ge=1, le=65535)
    """``serve``: TCP port."""
    cronjob_name: str = "cropseg-drift"
    """In a cluster, on-demand runs are Jobs created from this CronJob."""
    namespace: str | None = None
    """Namespace of the CronJob; default: the pod's own."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """``serve``: on SIGTERM, how long in-flight requests may take."""

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        return get_layout(value).name  # ValueError listing the layouts: start-up refuses


@lru_cache
def get_settings() -> DriftSettings:
    return DriftSettings()
