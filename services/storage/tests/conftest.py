from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cropseg_storage.main import create_app
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from storage_testing import fake_inference, make_settings, routed


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app on an empty data folder, a fake inference service, no drift monitor."""
    app = create_app(make_settings(tmp_path / "data"), CollectorRegistry(), routed(inference=fake_inference))
    with TestClient(app) as test_client:
        yield test_client
