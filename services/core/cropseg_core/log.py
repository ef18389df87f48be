"""One logging setup for every process: readable text for people, JSON lines for collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
OUTGOING_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
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
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
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
