from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cropseg_storage.main import create_app
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from storage_testing import REPO, fake_inference, make_settings, routed

from cropseg_core.processes import free_port, running_service


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app on an empty data folder, a fake inference service, no drift monitor."""
    app = create_app(make_settings(tmp_path / "data"), CollectorRegistry(), routed(inference=fake_inference))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Real inference and storage processes on loopback, storage seeded with the sample tiles."""
    data = tmp_path_factory.mktemp("live-data")
    inference_port, storage_port = free_port(), free_port()
    inference_url = f"http://127.0.0.1:{inference_port}"
    storage_url = f"http://127.0.0.1:{storage_port}"
    with (
        running_service(
            [sys.executable, "-m", "cropseg_inference", "--port", str(inference_port)],
            f"{inference_url}/readyz",
            env={"INFERENCE_WARMUP_RUNS": "1", "INFERENCE_LOG_LEVEL": "WARNING"},
            cwd=REPO,
        ),
        running_service(
            [sys.executable, "-m", "cropseg_storage", "--port", str(storage_port), "--data", str(data),
             "--inference-url", inference_url],
            f"{storage_url}/readyz",
            env={"STORAGE_LOG_LEVEL": "WARNING", "STORAGE_STATUS_INTERVAL_S": "2"},
            cwd=REPO,
        ),
    ):  # fmt: skip
        yield {"inference": inference_url, "storage": storage_url, "data": str(data)}
