"""The service as a real process on loopback: entry point, graceful shutdown, load shedding."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from inference_testing import REPO, png
from PIL import Image

from cropseg_core import processes
from cropseg_core.processes import free_port

pytestmark = pytest.mark.slow


@contextmanager
def running_service(
    log_path: Path | None = None, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with processes.running_service(
        [sys.executable, "-m", "cropseg_inference", "--port", str(port)],
        f"{url}/readyz",
        env={"INFERENCE_WARMUP_RUNS": "1", **{f"INFERENCE_{k.upper()}": v for k, v in env.items()}},
        cwd=REPO,
        log_path=log_path,
    ) as process:
        yield process, url


def large_png(field_tile: np.ndarray, size: int) -> bytes:
    return png(np.ascontiguousarray(np.tile(field_tile, (size // 360 + 1, size // 480 + 1, 1))[:size, :size]))


def test_sigterm_finishes_in_flight_requests_then_exits(field_tile: np.ndarray, tmp_path: Path) -> None:
    body = large_png(field_tile, 1800)  # 25 tiles: about two seconds of work
    log_path = tmp_path / "inference.log"
    with running_service(log_path) as (process, url), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post,
            f"{url}/api/v1/segment",
            content=body,
            headers={"content-type": "image/png"},
            timeout=60,
        )
        deadline = time.monotonic() + 10
        while "cropseg_inference_queue_depth 0.0" in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "request never reached the model"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)  # no longer accepting
        response = pending.result(timeout=60)
        assert response.status_code == 200
        assert response.headers["x-tiles"] == "25"
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is the
        # ordinary "terminated by SIGTERM" one; the log line below shows the clean path ran.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "shutting down: finishing queued work" in log_path.read_text()


def test_full_queue_answers_503_with_retry_after_at_once(field_tile: np.ndarray) -> None:
    body = large_png(field_tile, 1000)  # 9 tiles
    with running_service(max_queue_tiles="1", max_batch_size="1") as (_, url), ThreadPoolExecutor(6) as pool:
        post = lambda _: httpx.post(  # noqa: E731
            f"{url}/api/v1/segment", content=body, headers={"content-type": "image/png"}, timeout=60
        )
        responses = list(pool.map(post, range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200
        assert statuses[-1] == 503
        shed = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" for r in shed)
        # Refused at once, not after waiting: before the accepted request's answer (a ratio of
        # times from one run, not a wall-clock bar, so that a busy machine does not fail it).
        answered = min(r.elapsed for r in responses if r.status_code == 200)
        assert max(r.elapsed for r in shed) < answered / 2
        assert "at capacity" in shed[0].json()["error"]["message"]
        metrics = httpx.get(f"{url}/metrics").text
        assert f"cropseg_inference_rejected_total {float(len(shed))}" in metrics


def test_overload_is_shed_by_time_before_a_request_is_read(field_tile: np.ndarray) -> None:
    """A large request's tiles queued, and a bound of 0.05 s: a new request would wait for one of
    them (requests take turns), about 0.1 s, and is refused before its body is read or parsed (a
    body that is no image gets 503, not 415); once the queue has drained, requests are read and
    judged again."""
    body = large_png(field_tile, 1800)
    png_type = {"content-type": "image/png"}
    with running_service(max_queue_wait_s="0.05") as (_, url), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/api/v1/segment", content=body, headers=png_type, timeout=60)
        deadline = time.monotonic() + 10
        while not re.search(r"cropseg_inference_queue_depth (1\d|2\d)\.0", httpx.get(f"{url}/metrics").text):
            assert time.monotonic() < deadline, "the large request never queued its tiles"
            time.sleep(0.01)
        refused = httpx.post(f"{url}/api/v1/segment", content=b"no image", headers=png_type)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert re.search(r"wait about 0\.\d+ s \(limit 0\.05 s\)", refused.json()["error"]["message"])
        oip = httpx.post(
            f"{url}/v2/models/cropseg-unet/infer", content=b"{", headers={"content-type": "application/json"}
        )
        assert oip.status_code == 503
        assert pending.result(timeout=60).status_code == 200
        assert httpx.post(f"{url}/api/v1/segment", content=b"no image", headers=png_type).status_code == 415


def test_missing_model_stops_start_up_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cropseg_inference", "--model", "/nonexistent/model.onnx"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "INFERENCE_MODEL_PATH" in result.stderr


def test_invalid_setting_is_refused() -> None:
    env = {**os.environ, "INFERENCE_TILE_OVERLAP": "300"}
    result = subprocess.run(
        [sys.executable, "-m", "cropseg_inference"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "tile_overlap" in result.stderr


def test_drone_photo_fits_the_documented_memory_limit(field_tile: np.ndarray) -> None:
    """docs/performance.md documents 1 GiB for the inference container."""
    photo = np.ascontiguousarray(np.tile(field_tile, (9, 9, 1))[:3000, :4000])
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=90)
    with running_service() as (process, url):
        response = httpx.post(
            f"{url}/api/v1/segment",
            content=buffer.getvalue(),
            headers={"content-type": "image/jpeg"},
            timeout=120,
        )
        assert response.status_code == 200
        assert (response.headers["x-image-width"], response.headers["x-image-height"]) == ("4000", "3000")
        assert int(response.headers["x-tiles"]) == 88  # full resolution: its leaves are narrow
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])  # type: ignore[index]
        assert peak_kib < 1024 * 1024, f"peak memory {peak_kib / 1024:.0f} MiB"
