"""Helpers shared by the inference tests (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from cropseg_inference.settings import InferenceSettings
from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "model" / "artifacts" / "cropseg-unet.onnx"
MODEL_VERSION = json.loads((MODEL.parent / "metrics.json").read_text())["model"]["version"]


def make_settings(**overrides: Any) -> InferenceSettings:
    return InferenceSettings(**{"model_path": MODEL, "warmup_runs": 1, **overrides})


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def wait_ready(client: TestClient, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not become ready"
        time.sleep(0.02)
