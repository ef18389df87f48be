"""The launcher behind ``make up``: taken ports, a second start on the same data, dead services."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cropseg_stack.launcher import Stack, StackConfig

from cropseg_core.processes import free_port

pytestmark = pytest.mark.slow


def config(data: Path, tmp_path: Path) -> StackConfig:
    return StackConfig(
        data=data,
        inference_port=free_port(),
        storage_port=free_port(),
        drift_port=free_port(),
        prometheus=False,
        drift_every_s=None,
        prometheus_dir=tmp_path / "prometheus",
        environment={"INFERENCE_WARMUP_RUNS": "1"},
    )


def test_a_taken_port_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "cropseg_stack", "up", "--data", str(tmp_path), "--no-prometheus"]
        result = subprocess.run(
            [*command, "--storage-port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert f"port in use: storage :{port}" in result.stderr
    assert "make up INFERENCE_PORT=" in result.stderr


def test_second_start_on_the_same_data_and_a_dead_service_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines: list[str] = []
    first = Stack(config(data, tmp_path), output=lambda name, line: lines.append(f"{name}|{line}"))
    first.start()
    storage = first.urls()["storage"]
    uploaded = httpx.get(f"{storage}/api/v1/images", params={"limit": 100}).json()["items"]
    assert len(uploaded) == 12  # seeded on the first start
    first.stop()

    second = Stack(config(data, tmp_path), output=lambda name, line: lines.append(f"{name}|{line}"))
    second.start()
    watcher = threading.Thread(target=second.wait)
    try:
        items = httpx.get(f"{second.urls()['storage']}/api/v1/images", params={"limit": 100}).json()["items"]
        assert [i["id"] for i in items] == [i["id"] for i in uploaded]  # same data, not seeded twice
        watcher.start()
        second.processes["drift-monitor"].kill()
        deadline = time.monotonic() + 10
        while not any("drift-monitor exited with code -9" in line for line in lines):
            assert time.monotonic() < deadline, "the dead service was not reported"
            time.sleep(0.1)
        assert httpx.get(f"{second.urls()['storage']}/healthz").status_code == 200  # the others keep running
    finally:
        second.stop()
        if watcher.is_alive():
            watcher.join(timeout=10)
    assert any(line.startswith("storage|") for line in lines)  # service output is streamed with its name
