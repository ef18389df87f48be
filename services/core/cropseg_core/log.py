"""One logging setup for every process: readable text for people, JSON lines for collectors.

Requests are logged by uvicorn's access logger, one line each with its status (a 415 or 422 a
client caused shows where the service runs), except the probes and scrapes
(:data:`QUIET_PATHS`), which would fill the terminal every few seconds. uvicorn's own loggers
appear as ``server`` (start, stop, errors) and ``access``: its ``uvicorn.error`` name is
historical and tagged every ordinary line "error".
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
OUTGOING_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Requests left out of the access log: the kubelet's probes and Prometheus' scrapes."""
LOGGER_NAMES = {"uvicorn.error": "server", "uvicorn.access": "access", "uvicorn": "server"}
"""Names shown instead of uvicorn's."""


def _shown_name(name: str) -> str:
    return LOGGER_NAMES.get(name, name)


class QuietPathsFilter(logging.Filter):
    """Drops uvicorn access records of :data:`QUIET_PATHS` (their args: client, method, path,
    HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in QUIET_PATHS
        return True


class TextFormatter(logging.Formatter):
    """``12:00:01 INFO    access: 127.0.0.1:50312 - "POST /api/v1/images HTTP/1.1" 415``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.name in LOGGER_NAMES:
            record = logging.makeLogRecord({**record.__dict__, "name": _shown_name(record.name)})
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": _shown_name(record.name),
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", *, stream: object = None
) -> None:
    """Route the root logger to ``stream`` (stderr by default) in the chosen format.

    Calling it again replaces the previous handler, so tests and re-exec'd workers can
    reconfigure without duplicating output.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_cropseg", False):
            root.removeHandler(old)
    handler._cropseg = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # One access line per request is the services' own; outgoing calls (httpx logs each at INFO)
    # show only when debugging.
    quiet = logging.DEBUG if logging.getLevelName(str(level).upper()) == logging.DEBUG else logging.WARNING
    for name in OUTGOING_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietPathsFilter) for f in access.filters):
        access.addFilter(QuietPathsFilter())
