"""Status-page arithmetic on recorded checks, and the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cropseg_storage.cli import main
from cropseg_storage.status import Check, StatusMonitor

from cropseg_core.store.filesystem import FilesystemStore

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def never_called() -> str | None:
    raise AssertionError("summary must not run checks")


def monitor(tmp_path: Path, history_days: int = 3) -> StatusMonitor:
    return StatusMonitor(
        FilesystemStore(tmp_path),
        {"inference": "http://inference:8001"},
        never_called,
        interval_s=30,
        history_days=history_days,
        client=httpx.AsyncClient(),
    )


def record(status: StatusMonitor, service: str, at: datetime, ok: bool, detail: str = "") -> None:
    check = Check(
        service=service, ok=ok, latency_ms=5, detail=detail or ("ready" if ok else "refused"), time=at
    )
    status.store.append_record(f"status/{at:%Y-%m-%d}", check.model_dump(mode="json"))


def test_incidents_are_runs_of_failed_checks(tmp_path: Path) -> None:
    status = monitor(tmp_path)
    pattern = [True, False, False, True, True, False]  # one resolved incident, one ongoing
    for minute, ok in enumerate(pattern):
        record(status, "inference", NOW - timedelta(minutes=10 - minute), ok)
        record(status, "storage", NOW - timedelta(minutes=10 - minute), True)
    summary = status.summary(NOW)
    inference = next(s for s in summary.services if s.name == "inference")
    assert (inference.state, inference.detail, inference.uptime) == ("down", "refused", pytest.approx(0.5))
    assert summary.overall == "down"
    resolved, ongoing = sorted(summary.incidents, key=lambda i: i.started_at)
    assert (resolved.checks_failed, resolved.ended_at) == (2, NOW - timedelta(minutes=7))
    assert (ongoing.checks_failed, ongoing.ended_at) == (1, None)
    assert summary.incidents[0] == ongoing  # newest first


def test_daily_uptime_covers_the_window_and_ignores_older_days(tmp_path: Path) -> None:
    status = monitor(tmp_path, history_days=3)
    record(status, "inference", NOW - timedelta(days=5), False)  # outside the window
    record(status, "inference", NOW - timedelta(days=1), True)
    record(status, "inference", NOW - timedelta(days=1, hours=1), False)
    record(status, "inference", NOW, True)
    inference = next(s for s in status.summary(NOW).services if s.name == "inference")
    assert [(d.date, d.uptime) for d in inference.days] == [
        ("2026-11-25", None),
        ("2026-11-26", 0.5),
        ("2026-11-27", 1.0),
    ]
    assert inference.state == "up"
    assert (inference.measured_since, inference.checks) == (NOW - timedelta(days=1, hours=1), 3)
    storage = next(s for s in status.summary(NOW).services if s.name == "storage")
    assert (storage.state, storage.uptime, storage.measured_since, storage.checks) == (
        "unknown",
        None,
        None,
        0,
    )


def test_uptime_says_since_when_it_was_measured(tmp_path: Path) -> None:
    status = monitor(tmp_path, history_days=7)
    for minute in range(6, 0, -1):  # six minutes after a first start
        record(status, "inference", NOW - timedelta(minutes=minute), True)
    inference = next(s for s in status.summary(NOW).services if s.name == "inference")
    assert (inference.uptime, inference.checks) == (1.0, 6)
    assert inference.measured_since == NOW - timedelta(minutes=6), "not 'over 7 days'"


def test_cli_refuses_bad_settings_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORAGE_API_TOKEN", "short")
    assert main(["--port", "8002"]) == 2
    assert "api_token must be at least 16 characters" in capsys.readouterr().err
    monkeypatch.delenv("STORAGE_API_TOKEN")
    assert main(["--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
