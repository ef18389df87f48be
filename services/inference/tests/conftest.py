from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from cropseg_inference.main import create_app
from fastapi.testclient import TestClient
from inference_testing import make_settings, png, wait_ready
from prometheus_client import CollectorRegistry

from cropseg_core.bands import get_layout, to_model_bands
from cropseg_model.synth import generate_tile


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The app with default settings, the committed model, a fresh metrics registry."""
    with TestClient(create_app(make_settings(), CollectorRegistry())) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def field_tile() -> np.ndarray:
    """A generated 360x480 RGB field tile (the size the model was evaluated on)."""
    return generate_tile(3, 0, 360, 480)[0].rgb


@pytest.fixture(scope="session")
def field_bands(field_tile: np.ndarray) -> np.ndarray:
    """The tile in the model's bands (red, green, blue, NIR = 0), as the pipeline feeds it."""
    return to_model_bands(field_tile, get_layout("rgb"))


@pytest.fixture(scope="session")
def field_png(field_tile: np.ndarray) -> bytes:
    return png(field_tile)
