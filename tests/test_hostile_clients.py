"""The hostile-client suite: careless or malicious clients against the real services, started
as `make up` starts them (loopback only, each test bounded to a few seconds).

Slow headers, trickled and half-sent bodies, a batch larger than the queue, a request larger
than the queue beside small ones, a client that leaves mid-request, deletes racing writes.
The limits are shortened through the settings a deployment would use
(``*_CONNECTIONS__HEADER_TIMEOUT_S`` etc.) so that the suite runs in seconds; the largest
requests and their memory are the contract test's (tests/test_memory_contract.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from cropseg_core.masks import encode_png
from cropseg_core.processes import free_port, read_http_answer, running_service

PNG = {"content-type": "image/png"}
HEADER_TIMEOUT_S = 1.0
BODY_PACE_S = 1.5  # idle timeout and grace for bodies
QUEUE_TILES = 16
TILE = 128  # small tiles: a "maximal" request of hundreds of tiles takes a second or two
LIMITS = {
    "CONNECTIONS__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CONNECTIONS__BODY_IDLE_TIMEOUT_S": str(BODY_PACE_S),
    "CONNECTIONS__BODY_GRACE_S": str(BODY_PACE_S),
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Service:
    url: str
    port: int
    pid: int

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def metric(self, name: str) -> float:
        """The value of one sample of ``/metrics`` (0 when absent)."""
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


@dataclass
class Services:
    inference: Service
    storage: Service


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    inference_port, storage_port = free_port(), free_port()
    inference_env = {f"INFERENCE_{name}": value for name, value in LIMITS.items()} | {
        "INFERENCE_WARMUP_RUNS": "1",
        "INFERENCE_TILE_SIZE": str(TILE),
        "INFERENCE_TILE_OVERLAP": "32",
        "INFERENCE_MAX_QUEUE_TILES": str(QUEUE_TILES),
    }
    storage_env = {f"STORAGE_{name}": value for name, value in LIMITS.items()}
    inference_url = f"http://127.0.0.1:{inference_port}"
    storage_url = f"http://127.0.0.1:{storage_port}"
    with (
        tempfile.TemporaryDirectory() as data,
        running_service(
            [sys.executable, "-m", "cropseg_inference", "--port", str(inference_port)],
            f"{inference_url}/readyz",
            env=inference_env,
        ) as inference,
        running_service(
            [sys.executable, "-m", "cropseg_storage", "--port", str(storage_port), "--data", data,
             "--inference-url", inference_url],
            f"{storage_url}/readyz",
            env=storage_env,
        ) as storage,
    ):  # fmt: skip
        yield Services(
            Service(inference_url, inference_port, inference.pid),
            Service(storage_url, storage_port, storage.pid),
        )


def field_png(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    pixels[..., 1] = np.maximum(pixels[..., 1], 96)  # some green
    return encode_png(pixels, compress_level=1)


def post_raw(port: int, path: str, declared: int, first: bytes) -> socket.socket:
    """A POST that declares ``declared`` bytes and sends only ``first`` of them."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=15)
    connection.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + first
    )
    return connection


@pytest.mark.parametrize("service", ["inference", "storage"])
def test_slow_headers_are_cut_off_while_others_are_served(services: Services, service: str) -> None:
    """60 clients send a header line every 0.3 s (slowloris): each gets 408 and is disconnected
    at the header deadline, and a normal client is served meanwhile."""
    target: Service = getattr(services, service)
    sockets = [socket.create_connection(("127.0.0.1", target.port), timeout=15) for _ in range(60)]
    started = time.monotonic()
    try:
        for connection in sockets:
            connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        for line in range(3):
            time.sleep(0.3)
            for connection in sockets:
                with contextlib.suppress(OSError):  # closed by the server already
                    connection.sendall(f"X-Slow-{line}: 1\r\n".encode())
            if line == 0:
                assert httpx.get(f"{target.url}/healthz", timeout=5).status_code == 200
        answers = [read_http_answer(connection) for connection in sockets]
        assert {status for status, _ in answers} == {408}
        assert all(connection.recv(1) == b"" for connection in sockets)  # closed
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3
    finally:
        for connection in sockets:
            connection.close()


def test_a_trickled_upload_gets_408(services: Services) -> None:
    connection = post_raw(services.storage.port, "/api/v1/images", 1_000_000, b"\x89PNG")
    with connection:
        for _ in range(20):
            time.sleep(0.2)
            try:
                connection.sendall(b"x" * 10)  # 50 B/s
            except OSError:
                break
        status, body = read_http_answer(connection)
    assert status == 408
    assert "arrives too slowly" in body


def test_half_sent_large_uploads_hold_no_memory_and_are_refused_beyond_the_budget(
    services: Services,
) -> None:
    """Eight clients declare a 50 MB upload and send one byte. Storage takes at most twice its
    largest body (two 50 MB files: ~200 MB) at once: four are held, the rest get 503 +
    Retry-After at once; the process does not grow; the held ones time out (408) and then
    uploads are served again."""
    storage = services.storage
    before = storage.rss_mib()
    holders = [post_raw(storage.port, "/api/v1/images", 50 * 1024 * 1024, b"\x89") for _ in range(8)]
    try:
        answers = [read_http_answer(holder) for holder in holders]
        statuses = sorted(status for status, _ in answers)
        assert statuses == [408] * 4 + [503] * 4
        assert all("takes at most" in body for status, body in answers if status == 503)
        assert storage.rss_mib() - before < 64
    finally:
        for holder in holders:
            holder.close()
    upload = httpx.post(f"{storage.url}/api/v1/images", content=field_png(64), headers=PNG, timeout=30)
    assert upload.status_code in (200, 201)


def test_an_oip_batch_larger_than_the_queue_is_computed_in_chunks(services: Services) -> None:
    """Twice as many tiles as the queue holds, on an idle server: answered 200, never a 503 loop."""
    batch = np.random.default_rng(1).integers(0, 256, (2 * QUEUE_TILES + 1, TILE, TILE, 3), dtype=np.uint8)
    header = json.dumps({
        "inputs": [{"name": "image", "shape": list(batch.shape), "datatype": "UINT8",
                    "parameters": {"binary_data_size": batch.size}}],
        "outputs": [{"name": "vegetation_fraction"}],
    }).encode()  # fmt: skip
    response = httpx.post(
        f"{services.inference.url}/v2/models/cropseg-unet/infer",
        content=header + batch.tobytes(),
        headers={"inference-header-content-length": str(len(header))},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]["data"]) == len(batch)


def test_small_requests_are_served_while_a_request_larger_than_the_queue_runs(services: Services) -> None:
    """A 1600 px image is ~300 tiles, the queue holds 16: it runs in chunks of 4, and every
    small request sent meanwhile is answered (no 503) before the large one is done."""
    inference = services.inference
    large, small = field_png(1600, seed=2), field_png(TILE, seed=3)
    done: dict[str, float] = {}

    def segment(name: str, png: bytes) -> int:
        response = httpx.post(
            f"{inference.url}/api/v1/segment?scale=1", content=png,
            headers=PNG, timeout=120,
        )  # fmt: skip
        done[name] = time.monotonic()
        return response.status_code

    with ThreadPoolExecutor(max_workers=9) as pool:
        big = pool.submit(segment, "large", large)
        time.sleep(0.5)  # the large request is running
        smalls = [pool.submit(segment, f"small-{n}", small) for n in range(8)]
        statuses = [future.result() for future in smalls]
        assert big.result() == 200
    assert statuses == [200] * 8
    assert max(done[f"small-{n}"] for n in range(8)) < done["large"]


def test_a_client_that_leaves_stops_its_work(services: Services) -> None:
    """A client sends a ~300-tile image and disconnects: the service stops computing it (its
    queued tiles are dropped), counts it as cancelled and 499, and serves the next client."""
    inference = services.inference
    png = field_png(1600, seed=4)
    batches = "cropseg_inference_batch_size_count"
    before = inference.metric(batches)
    connection = socket.create_connection(("127.0.0.1", inference.port), timeout=15)
    connection.sendall(
        f"POST /api/v1/segment?scale=1 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(png)}\r\n\r\n".encode()
        + png
    )
    deadline = time.monotonic() + 30
    while inference.metric(batches) == before:  # decoded, prepared, its tiles running
        assert time.monotonic() < deadline
        time.sleep(0.05)
    connection.close()
    deadline = time.monotonic() + 10
    while inference.metric('cropseg_segmentation_result_total{result="cancelled"}') < 1:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.05)
    time.sleep(0.5)
    settled = inference.metric(batches)
    time.sleep(0.5)
    assert inference.metric(batches) == settled  # nothing more of it runs
    assert settled - before < 150  # of ~300 tiles
    assert inference.metric("cropseg_inference_queue_depth") == 0
    assert inference.metric('http_requests_total{handler="/api/v1/segment",method="POST",status="499"}') >= 1
    assert (
        httpx.post(f"{inference.url}/api/v1/segment", content=field_png(TILE), headers=PNG).status_code == 200
    )


def test_deletes_racing_label_writes_leave_no_orphans(services: Services) -> None:
    """A label PUT and a DELETE of the same image at once, 12 times: whatever order they land
    in, uploading the same bytes again finds no label from before."""
    label = encode_png(np.full((64, 64), 255, np.uint8))
    with httpx.Client(base_url=services.storage.url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        for round_ in range(12):
            png = field_png(64, seed=100 + round_)
            image = f"/api/v1/images/{client.post('/api/v1/images', content=png, headers=PNG).json()['id']}"
            start = threading.Barrier(2)
            labelled = pool.submit(at_once, start, client.put, f"{image}/label", content=label, headers=PNG)
            deleted = pool.submit(at_once, start, client.delete, image)
            assert labelled.result() in (204, 404)
            assert deleted.result() == 204
            again = client.post("/api/v1/images", content=png, headers=PNG)
            assert again.status_code == 201  # stored anew, not found half-deleted
            assert again.json()["has_label"] is False
            client.delete(image)


def at_once(
    start: threading.Barrier, send: Callable[..., httpx.Response], *args: object, **kwargs: object
) -> int:
    """``send(...)``'s status, sent when the other party of ``start`` is ready too."""
    start.wait()
    return send(*args, **kwargs).status_code


def test_uploads_with_a_label_racing_deletes_leave_no_orphans(services: Services) -> None:
    """An upload with a label and DELETEs of its id sent until one lands (the first after the
    image is stored), 300 times: once the image is deleted, uploading the bytes without a label
    finds no label, and no request fails on the folders the DELETE removes."""
    rounds = 300  # ~15 s; before the fix 7 to 15 of 300 left an orphan label (1,000 take ~40 s)
    png, label = field_png(64, seed=200), encode_png(np.full((64, 64), 255, np.uint8))
    files = {"file": ("field.png", png, "image/png"), "label": ("label.png", label, "image/png")}
    orphans = 0
    with httpx.Client(base_url=services.storage.url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        image = f"/api/v1/images/{client.post('/api/v1/images', content=png, headers=PNG).json()['id']}"
        assert client.delete(image).status_code == 204

        def delete_once_stored(upload_answered: Callable[[], bool]) -> httpx.Response:
            while True:
                deleted = client.delete(image)
                if deleted.status_code != 404 or upload_answered():
                    return deleted

        for _ in range(rounds):
            start = threading.Barrier(2)
            uploaded = pool.submit(at_once, start, client.post, "/api/v1/images", files=files)
            deleted = pool.submit(at_once, start, delete_once_stored, uploaded.done)
            assert uploaded.result() in (200, 201, 404)  # 404: deleted while its label was written
            assert deleted.result() in (204, 404)  # 404: the upload was answered first
            assert client.delete(image).status_code in (204, 404)
            again = client.post("/api/v1/images", content=png, headers=PNG)
            assert again.status_code == 201
            orphans += again.json()["has_label"]
            assert client.delete(image).status_code == 204
    assert orphans == 0, f"{orphans} orphan labels in {rounds} races"


def test_a_client_dropping_mid_upload_is_counted_499_not_500(services: Services) -> None:
    """Three clients send the start of an upload and disconnect: each is counted with 499
    (client closed request), none as the 500 that the CropsegHighErrorRatio alert counts."""
    storage = services.storage
    counted = 'http_requests_total{handler="/api/v1/images",method="POST",status="%s"}'
    before = {status: storage.metric(counted % status) for status in ("499", "500")}
    for _ in range(3):
        post_raw(storage.port, "/api/v1/images", 100_000, field_png(64)[:1000]).close()
    deadline = time.monotonic() + BODY_PACE_S  # before the body's idle timeout would answer 408
    while storage.metric(counted % "499") < before["499"] + 3:
        assert time.monotonic() < deadline, "the dropped uploads were not counted as 499"
        time.sleep(0.05)
    assert storage.metric(counted % "500") == before["500"]
