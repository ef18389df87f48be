"""Helpers shared by the storage tests (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cropseg_storage.settings import StorageSettings
from PIL import Image

from cropseg_core.contracts import SegmentationHeaders
from cropseg_core.store import StoreSettings

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "model" / "artifacts" / "samples"
TOKEN = "a-test-token-of-32-characters-xx"


def make_settings(data: Path, **overrides: Any) -> StorageSettings:
    """Settings on a fresh data folder, without sample seeding unless asked."""
    return StorageSettings(**{"store": StoreSettings(path=data), "samples_path": None, **overrides})


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def field_image(width: int = 40, height: int = 30, green_columns: int = 20, seed: int = 0) -> np.ndarray:
    """An RGB image whose green channel is bright in the first ``green_columns`` columns.

    The fake inference below calls exactly those pixels vegetation, so masks are known.
    """
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)
    pixels[:, :green_columns, 1] = 200
    return pixels


def column_mask(width: int, height: int, columns: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:, :columns] = 255
    return mask


def fake_inference(request: httpx.Request) -> httpx.Response:
    """The inference service's contract: vegetation = green channel above 127."""
    from cropseg_core.imaging import decode_image

    if request.url.path == "/readyz":
        return httpx.Response(200, json={"status": "ready"})
    assert request.url.path == "/api/v1/segment", request.url
    pixels = decode_image(request.content).pixels
    mask = np.where(pixels[..., 1] > 127, 255, 0).astype(np.uint8)
    answer = SegmentationHeaders(
        vegetation_fraction=float((mask > 0).mean()),
        image_width=mask.shape[1],
        image_height=mask.shape[0],
        threshold=float(request.url.params.get("threshold", "0.55")),
        tiles=1,
        layout=request.url.params.get("layout", "rgb"),
        working_scale=1.0,
        model_name="cropseg-unet",
        model_version="1.0.0",
    )
    return httpx.Response(
        200, content=encode(mask), headers={"content-type": "image/png", **answer.to_headers()}
    )


def routed(**services: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    """One transport for every outgoing call, dispatching on the port (8001 inference, 8003 drift)."""
    ports = {8001: "inference", 8003: "drift"}

    def handler(request: httpx.Request) -> httpx.Response:
        name = ports.get(request.url.port or 80, "")
        if name not in services:
            raise httpx.ConnectError(
                f"nothing listens on {request.url.host}:{request.url.port}", request=request
            )
        return services[name](request)

    return httpx.MockTransport(handler)
