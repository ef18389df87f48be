"""The whole system on loopback: a user's journey, and what happens when parts fail."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from cropseg_stack.launcher import Stack
from PIL import Image

from cropseg_core.imaging import decode_image
from cropseg_core.masks import encode_png
from cropseg_model.cli import ARTIFACTS
from cropseg_model.synth import generate_tile

MODEL_VERSION = json.loads((ARTIFACTS / "metrics.json").read_text())["model"]["version"]

pytestmark = pytest.mark.slow


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


REAL = ARTIFACTS.parent / "data" / "real"


def real_photos() -> list[np.ndarray]:
    """The 57 held-out real photos of the model's training sources (EWS wheat and peanut, never
    trained on), in a fixed shuffled order: what a grower like those the model learned from uploads."""
    splits = ("ews/val", "ews/select", "peanut/val", "peanut/select")
    paths = [path for split in splits for path in sorted((REAL / split / "images").iterdir())]
    random.Random(0).shuffle(paths)
    return [decode_image(path.read_bytes()).pixels for path in paths]


def upload_and_segment(client: httpx.Client, images: list[np.ndarray], brightness: float = 1.0) -> list[str]:
    ids = []
    for pixels in images:
        image = np.clip(pixels.astype(np.float32) * brightness, 0, 255).astype(np.uint8)
        response = client.post("/api/v1/images", content=png(image), headers={"content-type": "image/png"})
        assert response.status_code in (200, 201), response.text
        image_id = response.json()["id"]
        assert client.post(f"/api/v1/images/{image_id}/segmentation").status_code == 201
        ids.append(image_id)
    return ids


def wait_for_metric(prometheus: str, expr: str, value: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()["data"]["result"]
        if result and float(result[0]["value"][1]) == value:
            return
        assert time.monotonic() < deadline, f"{expr} never became {value}: {result}"
        time.sleep(0.5)


def test_journey_upload_label_segment_evaluate_then_drift(system: Stack) -> None:
    storage, prometheus = system.urls()["storage"], system.urls()["prometheus"]
    with httpx.Client(base_url=storage, timeout=60) as client:
        tile, encoded, ext = generate_tile(41, 3)
        files = {"file": (f"plot.{ext}", encoded), "label": ("truth.png", encode_png(tile.mask))}
        image = client.post("/api/v1/images", files=files).json()
        assert image["has_label"] is True
        segmentation = client.post(f"/api/v1/images/{image['id']}/segmentation").json()
        assert segmentation["model_version"] == MODEL_VERSION
        mask = decode_image(client.get(f"/api/v1/images/{image['id']}/mask").content).pixels[..., 0]
        assert mask.shape == tile.mask.shape
        evaluation = client.get(f"/api/v1/images/{image['id']}/evaluation").json()
        assert evaluation["iou"] > 0.6  # this tile (red soil, broadleaf) scores 0.73; synthetic mean 0.82
        expected_accuracy = float(((mask > 127) == (tile.mask > 127)).mean())
        assert evaluation["pixel_accuracy"] == pytest.approx(expected_accuracy)

        photos = real_photos()
        upload_and_segment(client, photos[:28])
        assert system.run_drift(window_images="28") == 0  # photos like the training photos: no drift
        wait_for_metric(prometheus, 'cropseg_drift_detected{check="overall"}', 0)
        quiet = client.get("/api/v1/drift/reports/latest").json()
        assert quiet["status"] == "no_drift", quiet["summary"]
        # the model's confidence on these photos: an IoU estimate like on its validation photos
        assert quiet["performance"]["status"] == "ok", quiet["performance"]
        wait_for_metric(prometheus, 'cropseg_drift_detected{check="estimated_iou"}', 0)

        upload_and_segment(client, photos[28:56], brightness=1.5)
        assert system.run_drift(window_images="28") == 1  # over-exposed: drift, the Job fails
        wait_for_metric(prometheus, 'cropseg_drift_detected{check="overall"}', 1)
        loud = client.get("/api/v1/drift/reports/latest").json()
        assert loud["status"] == "drift"
        assert "brightness" in loud["detectors"]["image_properties"]["data"]["drifted"]
        assert "exposure changed" in loud["summary"], loud["summary"]
        assert loud["id"] != quiet["id"]
        metrics = httpx.get(f"{system.urls()['drift-monitor']}/metrics").text
        assert 'cropseg_drift_runs_total{outcome="drift"}' in metrics


def test_inference_killed_mid_request_gives_a_clear_answer_then_recovers(system: Stack) -> None:
    storage = system.urls()["storage"]
    field = generate_tile(44, 0)[0].rgb
    big = png(np.ascontiguousarray(np.tile(field, (6, 5, 1))))  # 2160x2400: a few seconds of inference
    with httpx.Client(base_url=storage, timeout=120) as client:
        image_id = client.post("/api/v1/images", content=big, headers={"content-type": "image/png"}).json()[
            "id"
        ]
        answer: dict[str, httpx.Response] = {}
        request = threading.Thread(
            target=lambda: answer.setdefault("r", client.post(f"/api/v1/images/{image_id}/segmentation"))
        )
        request.start()
        time.sleep(1.0)  # the request is at inference now
        system.kill_service("inference")
        request.join(timeout=60)
        failed = answer["r"]
        assert failed.status_code in (502, 503), failed.text
        assert failed.json()["error"]["code"] in ("inference_unavailable", "inference_failed")
        down = client.post(f"/api/v1/images/{image_id}/segmentation")
        assert (down.status_code, down.headers.get("retry-after")) == (503, "2")
        assert "not reachable" in down.json()["error"]["message"]
        degraded = client.get("/readyz")  # storage stays in service: UI, uploads and reads work
        assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded")
        assert client.get(f"/api/v1/images/{image_id}/metadata").status_code == 200
        system.start_service("inference")
        recovered = client.post(f"/api/v1/images/{image_id}/segmentation")
        assert recovered.status_code == 201, recovered.text
        assert client.get("/readyz").json()["status"] == "ready"


def test_storage_killed_during_uploads_loses_no_acknowledged_upload(system: Stack) -> None:
    storage = system.urls()["storage"]
    bodies = [png(generate_tile(45, i)[0].rgb) for i in range(30)]
    acknowledged: dict[str, bytes] = {}

    def upload(body: bytes) -> None:
        try:
            response = httpx.post(
                f"{storage}/api/v1/images", content=body, headers={"content-type": "image/png"}
            )
        except httpx.TransportError:
            return
        if response.status_code in (200, 201):
            acknowledged[response.json()["id"]] = body

    threads = [threading.Thread(target=upload, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    while len(acknowledged) < 3:
        time.sleep(0.01)
    system.kill_service("storage")
    for thread in threads:
        thread.join()
    hidden = [p for p in Path(system.config.data).rglob(".*.tmp")]
    system.start_service("storage")
    for image_id, body in acknowledged.items():
        assert httpx.get(f"{storage}/api/v1/images/{image_id}").content == body
    page = httpx.get(f"{storage}/api/v1/images", params={"limit": 100}).json()["items"]
    assert set(acknowledged) <= {item["id"] for item in page}
    for path in hidden:  # temp files of interrupted writes are never visible through the API
        assert not path.name.startswith(tuple(acknowledged))


def test_drift_run_with_an_unreadable_image_reports_and_skips_it(system: Stack) -> None:
    storage = system.urls()["storage"]
    image_id = httpx.post(
        f"{storage}/api/v1/images",
        content=png(generate_tile(46, 0)[0].rgb),
        headers={"content-type": "image/png"},
    ).json()["id"]
    path = Path(system.config.data) / "images" / image_id[:2] / f"{image_id}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"damaged on the volume")
    assert system.run_drift(window_images="30") in (0, 1)
    report = httpx.get(f"{system.urls()['drift-monitor']}/api/v1/drift/reports/latest").json()
    assert [s["id"] for s in report["skipped"]] == [image_id]
    log = (Path(system.config.data) / "drift" / "drift.log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["report_id"] == report["id"]
