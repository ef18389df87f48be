"""Settings of the inference service (environment variables prefixed ``INFERENCE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from cropseg_core.segmenter import GraphOptimization
from cropseg_core.settings import ServiceSettings

# The network pools four times, so tile offsets and sizes on a multiple of 16 keep its grid aligned.
GRID = 16


class InferenceSettings(ServiceSettings):
    """Defaults are measured on a 2-core CPU: see docs/performance.md."""

    model_config = ServiceSettings.model_config | {"env_prefix": "INFERENCE_"}

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` in a container)."""
    port: int = Field(default=8001, ge=1, le=65535)
    """TCP port to listen on."""
    model_path: Path = Path("model/artifacts/cropseg-unet.onnx")
    """The exported ONNX model (the image bakes it in at /app/model/cropseg-unet.onnx)."""
    model_card_path: Path | None = None
    """The model's metrics.json; by default the one beside ``model_path``."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime threads per run; 0 = one per physical core (1 thread is twice as slow on 2 cores)."""
    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime graph optimisation level ("all" is 1.6x faster than "basic" here)."""
    thread_spinning: bool = True
    """Whether ONNX Runtime's idle intra-op threads busy-wait for the next run (faster hand-over)
    or sleep (CPU left to the rest of the pod); measured both ways in docs/performance.md."""
    tile_size: int = Field(default=512, ge=64, le=4096)
    """Images up to this many pixels a side (at their working resolution) run in one pass;
    larger ones in overlapping tiles."""
    tile_overlap: int = Field(default=128, ge=0)
    """Pixels shared by neighbouring tiles; each tile keeps only its centre, so seams fall
    where both tiles see at least overlap/2 pixels of context (with 128, a stitched mask
    differs from one pass on about 0.02 % of pixels: services/core/tests/test_tiling.py)."""
    auto_leaf_px: float = Field(default=16.0, ge=0, le=512)
    """Automatic working resolution: an image whose typical leaf (measured on its vegetation
    index) is wider than this many pixels is segmented scaled down until it is this wide, and
    the mask resized back (0 = always full resolution). Requests may pass ``gsd_mm`` or ``scale``."""
    max_batch_size: int = Field(default=1, ge=1, le=64)
    """Most tiles of equal shape run together in one ONNX Runtime call. On CPU a batch is no
    faster per tile than single runs and needs more memory (docs/performance.md), so the
    default is 1; raise it on GPUs or many-core nodes."""
    max_batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    """How long the batcher waits for more tiles before running a partial batch (0 = take
    what is already queued, never wait)."""
    max_queue_tiles: int = Field(default=128, ge=1)
    """When this many tiles are waiting, new requests get 503 with Retry-After at once."""
    max_queue_wait_s: float = Field(default=1.5, ge=0, le=600)
    """A new request that would wait longer than this before its first tile runs (tiles ahead
    of it times the recent seconds per tile) gets 503 with Retry-After at once: overload is
    shed early and admitted requests keep a bounded latency (0 = bounded by tiles only)."""
    max_tensor_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest Open Inference Protocol request body (JSON or binary tensors), in bytes."""
    retry_after_s: int = Field(default=1, ge=1)
    """Value of Retry-After on 503 answers."""
    warmup_runs: int = Field(default=2, ge=0)
    """Runs on a blank tile before the service reports ready."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM, how long in-flight requests may take before the process exits anyway."""

    @model_validator(mode="after")
    def _tiling_is_consistent(self) -> InferenceSettings:
        if self.tile_size % GRID or self.tile_overlap % GRID:
            raise ValueError(f"tile_size and tile_overlap must be multiples of {GRID}")
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError("tile_overlap must be less than half of tile_size")
        return self

    @property
    def card_path(self) -> Path:
        return self.model_card_path or self.model_path.with_name("metrics.json")


@lru_cache
def get_settings() -> InferenceSettings:
    return InferenceSettings()
