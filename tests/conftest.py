"""The whole system as real processes on loopback, for the cross-service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cropseg_stack.launcher import Stack, StackConfig

from cropseg_core.processes import free_port


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str) -> Iterator[Stack]:
    """inference, drift-monitor API, storage and Prometheus (1 s scrapes) on free ports.

    No periodic drift run: the tests start runs themselves. The services' output goes to
    stack.log in the session's temporary folder.
    """
    folder = tmp_path_factory.mktemp("system")
    log = (folder / "stack.log").open("a", encoding="utf-8")
    config = StackConfig(
        data=folder / "data",
        inference_port=free_port(),
        storage_port=free_port(),
        drift_port=free_port(),
        prometheus_port=free_port(),
        prometheus=True,
        drift_every_s=None,
        scrape_interval_s=1.0,
        prometheus_dir=folder / "prometheus",
        environment={
            "INFERENCE_WARMUP_RUNS": "1",
            "STORAGE_STATUS_INTERVAL_S": "2",
            "STORAGE_STATS_INTERVAL_S": "2",
            "DRIFT_MIN_SAMPLES": "20",
            "DRIFT_CLASSIFIER_TREES": "30",
        },
    )
    stack = Stack(config, output=lambda name, line: print(f"{name:<13}| {line}", file=log, flush=True))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        log.close()
