"""The service skeleton every service is built on (cropseg_core.web.service and .cli)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import Field

from cropseg_core.settings import ServiceSettings
from cropseg_core.store import StoreSettings
from cropseg_core.web.cli import file_exists, run_server, serve_arguments, settings_from, store_opens
from cropseg_core.web.service import ReadinessCheck, ServiceSpec, Spec, build_service, from_state


class DemoSettings(ServiceSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "DEMO_"}
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    shutdown_timeout_s: float = 1.0
    model_path: Path = Path("missing.onnx")
    store: StoreSettings = StoreSettings()


class Counter:
    def __init__(self) -> None:
        self.count = 0


router = APIRouter()
CounterDep = Annotated[Counter, Depends(from_state("counter", Counter))]


@router.get("/count")
def count(counter: CounterDep, spec: Spec) -> dict[str, object]:
    counter.count += 1
    return spec.info(count=counter.count)


def app_with(checks: dict[str, ReadinessCheck], started: list[str]) -> FastAPI:
    async def readiness(request: Request) -> dict[str, ReadinessCheck]:
        return checks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.counter = Counter()
        started.append("up")
        yield
        started.append("down")

    spec = ServiceSpec(
        name="cropseg-demo",
        distribution="cropseg-core",
        title="demo",
        description="A demo service.\n\nMore.",
        routers=[router],
        readiness=readiness,
        dependencies=("numpy",),
        largest_body_bytes=1024,
        chart_memory_limit_mib=256,
        home_note="A demo.",
    )
    app, budget = build_service(spec, DemoSettings(), CollectorRegistry(), lifespan)
    assert app.state.memory_budget is budget
    return app


@pytest.mark.parametrize(
    ("states", "status", "code"),
    [
        (("ok", "ok"), "ready", 200),
        (("ok", "degraded"), "degraded", 200),
        (("failed", "degraded"), "not ready", 503),
    ],
)
def test_readiness_is_the_worst_of_the_checks(states: tuple[str, str], status: str, code: int) -> None:
    checks = {
        f"c{i}": ReadinessCheck.model_validate({"status": s, "detail": s}) for i, s in enumerate(states)
    }
    with TestClient(app_with(checks, [])) as client:
        answer = client.get("/readyz")
        assert (answer.status_code, answer.json()["status"]) == (code, status)
        assert answer.json()["checks"]["c1"] == {"status": states[1], "detail": states[1]}
        assert client.get("/healthz").json() == {"status": "ok"}


def test_the_skeleton_gives_every_service_the_same_app() -> None:
    started: list[str] = []
    with TestClient(app_with({}, started)) as client:
        assert started == ["up"]
        first, second = client.get("/count").json(), client.get("/count").json()
        assert (first["count"], second["count"]) == (1, 2)  # the state the start-up made
        assert first["service"] == "cropseg-demo"
        assert first["version"][0].isdigit()
        assert set(first["dependencies"]) == {"cropseg-core", "numpy"}
        assert client.get("/nowhere").json()["error"]["code"]  # JSON errors
        assert "http_requests_total" in client.get("/metrics").text
        assert "A demo." in client.get("/").text  # the home page of an API-only service
        assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"  # hygiene outermost
    assert started == ["up", "down"]


def test_state_dependency_says_what_it_found() -> None:
    app = FastAPI()
    app.state.counter = "not a counter"

    @app.get("/")
    def read(counter: CounterDep) -> int:
        return counter.count

    with pytest.raises(TypeError, match=r"app\.state\.counter is str, not Counter"):
        TestClient(app).get("/")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_arguments(parser, "DEMO_", data=True)
    return parser.parse_args(argv)


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEMO_PORT", "9000")
    monkeypatch.setenv("DEMO_HOST", "0.0.0.0")
    settings = settings_from(DemoSettings, parse("--port", "9001", "--data", str(tmp_path)), "host", "port")
    assert (settings.host, settings.port, settings.store.path) == ("0.0.0.0", 9001, tmp_path)


def test_start_up_problems_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def never(settings: DemoSettings) -> FastAPI:
        raise AssertionError("must not serve")

    args = parse("--port", "-1")
    assert run_server("demo", lambda: settings_from(DemoSettings, args, "port"), never) == 2
    assert "demo: invalid settings" in capsys.readouterr().err

    model = file_exists("model_path", "model file", "DEMO_MODEL_PATH")
    assert run_server("demo", DemoSettings, never, model) == 2
    assert capsys.readouterr().err == (
        "demo: model file missing.onnx not found: run from the repository root or set DEMO_MODEL_PATH\n"
    )
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    settings = settings_from(DemoSettings, parse("--data", str(blocked)))
    assert run_server("demo", lambda: settings, never, store_opens) == 2
    assert str(blocked) in capsys.readouterr().err
