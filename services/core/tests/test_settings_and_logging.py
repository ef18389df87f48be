import io
import json
import logging
from typing import Literal

import pytest
from pydantic import ValidationError

from cropseg_core.log import configure_logging
from cropseg_core.settings import ImageLimits, ServiceSettings


class DemoSettings(ServiceSettings):
    model_config = ServiceSettings.model_config | {"env_prefix": "DEMO_"}


def test_settings_read_prefixed_and_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("DEMO_IMAGE_LIMITS__MAX_PIXELS", "1000")
    settings = DemoSettings()
    assert settings.log_level == "DEBUG"
    assert settings.image_limits.max_pixels == 1000


def test_unsafe_limits_refuse_to_start() -> None:
    with pytest.raises(ValidationError, match="max_bytes is too small"):
        DemoSettings(image_limits=ImageLimits(max_bytes=10, max_pixels=10_000))
    with pytest.raises(ValidationError):
        ImageLimits(max_pixels=0)


def test_json_logs_are_one_object_per_line_with_extras() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("cropseg.test").info("segmented", extra={"tile": 3})
    logging.getLogger("cropseg.test").debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "segmented"
    assert record["tile"] == 3
    assert record["level"] == "INFO"


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("INFO", "text", stream=second)
    logging.getLogger("cropseg.test").warning("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("WARNING", False), ("DEBUG", True)])
def test_outgoing_calls_are_logged_only_when_debugging(level: str, shown: bool) -> None:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    logging.getLogger("httpx").info(
        'HTTP Request: POST http://inference:8001/api/v1/segment "HTTP/1.1 200 OK"'
    )
    logging.getLogger("cropseg_storage.access").warning("the service's own line")
    assert ("HTTP Request" in stream.getvalue()) is shown
    assert "the service's own line" in stream.getvalue()


def access(path: str, status: int) -> None:
    """What uvicorn's access logger records for one request."""
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:50312", "POST", path, "1.1", status
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_requests_are_logged_with_their_status_but_not_probes_and_server_lines_are_not_errors(
    fmt: Literal["text", "json"],
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream=stream)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    access("/api/v1/images", 415)
    access("/api/v1/segment?layout=rgb", 422)
    for probe in ("/healthz", "/readyz", "/metrics", "/readyz?x=1"):
        access(probe, 200)
    out = stream.getvalue()
    if fmt == "json":
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["logger"] for r in records] == ["server", "access", "access"]
        out = "\n".join(r["message"] for r in records)
    assert '"POST /api/v1/images HTTP/1.1" 415' in out
    assert '"POST /api/v1/segment?layout=rgb HTTP/1.1" 422' in out
    assert not any(probe in out for probe in ("/healthz", "/readyz", "/metrics"))
    assert "uvicorn.error" not in out
    if fmt == "text":
        assert "INFO    server: Application startup complete." in out
        assert 'INFO    access: 127.0.0.1:50312 - "POST /api/v1/images HTTP/1.1" 415' in out
