"""Locust load test of cropseg: the seed's five tasks and weights, against the storage API.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8002          # web UI on :8089
    python loadtest/run.py high                                            # a profile, headless, with reports

Tasks (weight): the UI page and service info (1), sample gallery and one image from it (3), upload a new
image (2), segment a random image (2), evaluation of a labelled sample against its label (1).
Images are chosen at random, as the seed did to defeat caching; uploads are new bytes each
time. Every non-2xx answer, or a body without what it must hold, is a failure with its reason.

A 503 with Retry-After is load shed on purpose, not a fault: it is recorded as a failure whose
message starts with "shed", under the request's name plus " shed", and counted apart.
Pass/fail thresholds (exit code 1 when broken): CROPSEG_MAX_FAILURE_RATIO (failures other than
shedding, default 0), CROPSEG_MAX_SHED_RATIO (default 0.01) and CROPSEG_MAX_P95_MS, a JSON
object of per-request-name p95 limits in ms (of the answered requests: shed ones have their
own name).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from typing import Any, ClassVar

import numpy as np
from locust import HttpUser, between, events, task
from locust.env import Environment
from PIL import Image

log = logging.getLogger("cropseg.loadtest")
SAMPLES: list[dict[str, Any]] = []  # labelled sample images, segmented once at test start
UPLOADED: list[str] = []  # ids uploaded during the run (segmentation picks from both)


def field_png(rng: random.Random) -> bytes:
    """A new 360x480 soil-and-leaves image: different bytes every call (uploads are content-addressed)."""
    generator = np.random.default_rng(rng.getrandbits(32))
    image = np.empty((360, 480, 3), np.float32)
    image[:] = np.array([120, 90, 60]) * generator.uniform(0.7, 1.3)
    image += generator.normal(0, 15, image.shape)
    for _ in range(generator.integers(10, 40)):
        y, x, r = generator.integers(0, 360), generator.integers(0, 480), generator.integers(4, 16)
        image[max(0, y - r) : y + r, max(0, x - r) : x + r] = np.array([60, 150, 50]) * generator.uniform(
            0.8, 1.2
        )
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@events.test_start.add_listener  # type: ignore[untyped-decorator]  # locust's events are untyped
def prepare(environment: Environment, **_: Any) -> None:
    """Segment the labelled samples once, so the evaluation task always has a mask to score."""
    import requests

    host = environment.host or ""
    headers = _auth()
    samples = requests.get(
        f"{host}/api/v1/images/sample", params={"limit": "50", "source": "sample"}, timeout=30
    )
    samples.raise_for_status()
    SAMPLES[:] = [item for item in samples.json()["items"] if item["has_label"]]
    for item in SAMPLES:
        requests.post(
            f"{host}{item['links']['segmentation']}", headers=headers, timeout=120
        ).raise_for_status()
    log.info("prepared %d labelled samples", len(SAMPLES))


SHED = "shed: 503 Retry-After"


def shed(response: Any) -> bool:
    """Mark a 503 with Retry-After as shed load: a failure under its own name ("segment shed"),
    so the request's percentiles are those of the answers; True when it was one."""
    if response.status_code == 503 and response.headers.get("Retry-After"):
        response.request_meta["name"] += " shed"
        response.failure(SHED)
        return True
    return False


def _auth() -> dict[str, str]:
    token = os.environ.get("CROPSEG_API_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


class Agronomist(HttpUser):
    """One user of the web UI, doing what the seed's locustfile did, at its pace."""

    wait_time = between(1, 5)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = _auth()

    @task(1)
    def service_info(self) -> None:
        """The seed's main endpoint: the web UI's page, then the service's description."""
        with self.client.get("/", name="page", catch_response=True) as response:
            if response.status_code != 200 or b"<html" not in response.content[:200].lower():
                response.failure(f"page: {response.status_code} not the web UI's HTML")
        with self.client.get("/api/v1/info", name="info", catch_response=True) as response:
            if response.status_code != 200 or response.json().get("service") != "cropseg-storage":
                response.failure(f"info: {response.status_code} {response.text[:200]}")

    @task(3)
    def gallery(self) -> None:
        with self.client.get(
            "/api/v1/images/sample?limit=9", name="gallery", catch_response=True
        ) as response:
            items = response.json().get("items", []) if response.status_code == 200 else []
            if not items:
                response.failure(f"gallery: {response.status_code} no images: {response.text[:200]}")
                return
        image = self.rng.choice(items)
        with self.client.get(image["links"]["thumbnail"], name="image", catch_response=True) as response:
            if response.status_code != 200 or not response.content.startswith(b"\xff\xd8"):
                response.failure(f"image: {response.status_code} not a JPEG thumbnail")

    @task(2)
    def upload(self) -> None:
        body = field_png(self.rng)
        headers = {**self.headers, "Content-Type": "image/png"}
        with self.client.post("/api/v1/images", data=body, headers=headers, name="upload",
                              catch_response=True) as response:  # fmt: skip
            if shed(response):
                return
            if response.status_code not in (200, 201) or "id" not in response.json():
                response.failure(f"upload: {response.status_code} {response.text[:200]}")
                return
        UPLOADED.append(response.json()["id"])

    @task(2)
    def segment(self) -> None:
        choices = [item["id"] for item in SAMPLES] + UPLOADED[-200:]
        image_id = self.rng.choice(choices)
        with self.client.post(f"/api/v1/images/{image_id}/segmentation", headers=self.headers, name="segment",
                              catch_response=True) as response:  # fmt: skip
            if shed(response):
                return
            if response.status_code != 201 or not 0 <= response.json().get("vegetation_fraction", -1) <= 1:
                response.failure(f"segment: {response.status_code} {response.text[:200]}")

    @task(1)
    def evaluation(self) -> None:
        sample = self.rng.choice(SAMPLES)
        with self.client.get(
            sample["links"]["evaluation"], name="evaluation", catch_response=True
        ) as response:
            body = response.json() if response.status_code == 200 else {}
            if not 0 <= body.get("iou", -1) <= 1 or not 0 <= body.get("pixel_accuracy", -1) <= 1:
                response.failure(f"evaluation: {response.status_code} {response.text[:200]}")


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def enforce_thresholds(environment: Environment, **_: Any) -> None:
    """Exit code 1 when the failure or shed ratio or a request's p95 is above its threshold."""
    stats = environment.runner.stats if environment.runner else None
    if stats is None:
        return
    problems = []
    requests = max(1, stats.total.num_requests)
    shed_count = sum(error.occurrences for error in stats.errors.values() if str(error.error) == SHED)
    ratios = {
        "failure": ((stats.total.num_failures - shed_count) / requests, "CROPSEG_MAX_FAILURE_RATIO", "0"),
        "shed": (shed_count / requests, "CROPSEG_MAX_SHED_RATIO", "0.01"),
    }
    for what, (ratio, variable, default) in ratios.items():
        if ratio > (limit := float(os.environ.get(variable, default))):
            problems.append(f"{what} ratio {ratio:.4f} > {limit}")
    for name, limit_ms in json.loads(os.environ.get("CROPSEG_MAX_P95_MS", "{}")).items():
        entry = next((e for e in stats.entries.values() if e.name == name), None)
        if entry is not None and entry.num_requests and entry.get_response_time_percentile(0.95) > limit_ms:
            problems.append(f"{name}: p95 {entry.get_response_time_percentile(0.95):.0f} ms > {limit_ms} ms")
    if problems:
        log.error("thresholds broken: %s", "; ".join(problems))
    environment.process_exit_code = 1 if problems else 0  # Locust's own: 1 on any failure, shed ones too


if os.environ.get("CROPSEG_SHAPE") == "stress":
    from locust import LoadTestShape, constant

    class Segmenter(HttpUser):
        """The capacity search's user: segments a random labelled sample, back to back."""

        wait_time = constant(0)
        on_start = Agronomist.on_start

        @task
        def segment(self) -> None:
            Agronomist.segment(self)

    class StressShape(LoadTestShape):
        """Add users step by step until inference sheds load (segment answers 503) or the cap."""

        step_users = int(os.environ.get("CROPSEG_STRESS_STEP_USERS", "10"))
        step_seconds = float(os.environ.get("CROPSEG_STRESS_STEP_S", "30"))
        max_users = int(os.environ.get("CROPSEG_STRESS_MAX_USERS", "400"))
        max_seconds = float(os.environ.get("CROPSEG_STRESS_MAX_S", "1800"))  # a shape ignores --run-time

        def tick(self) -> tuple[int, float] | None:
            runner = self.runner
            shedding = runner is not None and any(
                "503" in str(error.error) for error in runner.stats.errors.values()
            )
            elapsed = float(self.get_run_time())  # type: ignore[no-untyped-call]
            users = self.step_users * (1 + int(elapsed // self.step_seconds))
            if shedding or users > self.max_users or elapsed > self.max_seconds:
                return None
            return users, float(self.step_users)


if os.environ.get("CROPSEG_SHAPE") == "curve":
    from locust import LoadTestShape

    class CurveShape(LoadTestShape):
        """The realistic mix at rising user counts, each held for a step: users -> latency -> shed.
        Unlike the stress search it does not stop at the first 503: shedding is what it shows."""

        users: ClassVar[list[int]] = [
            int(n) for n in os.environ.get("CROPSEG_CURVE_USERS", "10,20,30,40,50,60").split(",")
        ]
        step_seconds = float(os.environ.get("CROPSEG_CURVE_STEP_S", "60"))

        def tick(self) -> tuple[int, float] | None:
            step = int(self.get_run_time() // self.step_seconds)  # type: ignore[no-untyped-call]
            return (self.users[step], 10.0) if step < len(self.users) else None
