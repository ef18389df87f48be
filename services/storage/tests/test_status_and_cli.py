"""Status-page arithmetic on recorded checks, and the command line."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx
import pytest
from cropseg_storage.cli import main
from cropseg_storage.main import WEB
from cropseg_storage.status import Check, StatusMonitor

from cropseg_core.store.filesystem import FilesystemStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

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
    for step, ok in enumerate(pattern):  # every 30 s, the last one now
        record(status, "inference", NOW - timedelta(seconds=30 * (5 - step)), ok)
        record(status, "storage", NOW - timedelta(seconds=30 * (5 - step)), True)
    summary = status.summary(NOW)
    inference = next(s for s in summary.services if s.name == "inference")
    assert (inference.state, inference.detail, inference.uptime) == ("down", "refused", pytest.approx(0.5))
    assert summary.overall == "down"
    resolved, ongoing = sorted(summary.incidents, key=lambda i: i.started_at)
    assert (resolved.checks_failed, resolved.ended_at) == (2, NOW - timedelta(seconds=60))
    assert (ongoing.checks_failed, ongoing.ended_at) == (1, None)
    assert summary.incidents[0] == ongoing  # newest first


def test_daily_uptime_covers_the_window_and_ignores_older_days(tmp_path: Path) -> None:
    status = monitor(tmp_path, history_days=3)
    midnight = datetime(2026, 11, 27, tzinfo=UTC)
    record(status, "inference", midnight - timedelta(days=4), False)  # outside the window
    for seconds, ok in ((-60, False), (-30, True), (0, True), (30, True)):  # every 30 s around midnight
        record(status, "inference", midnight + timedelta(seconds=seconds), ok)
    now = midnight + timedelta(seconds=40)
    inference = next(s for s in status.summary(now).services if s.name == "inference")
    assert [(d.date, d.uptime) for d in inference.days] == [
        ("2026-11-25", None),
        ("2026-11-26", 0.5),
        ("2026-11-27", 1.0),
    ]
    assert inference.state == "up"
    assert (inference.measured_since, inference.checks, inference.missed) == (
        midnight - timedelta(seconds=60),
        4,
        0,
    )
    storage = next(s for s in status.summary(now).services if s.name == "storage")
    assert (storage.state, storage.uptime, storage.measured_since, storage.checks) == (
        "unknown",
        None,
        None,
        0,
    )


def test_the_time_the_stack_was_down_counts_as_down(tmp_path: Path) -> None:
    """The newcomer's case: 100 % uptime shown after the stack was down 1.5 minutes."""
    status = monitor(tmp_path)  # a check every 30 s
    before = [NOW - timedelta(seconds=30 * k) for k in range(10, 4, -1)]  # 6 checks, the last 2.5 min ago
    after = [NOW - timedelta(seconds=30), NOW]  # 2 checks since it came back, 2 min after the last one
    for at in [*before, *after]:
        record(status, "inference", at, True)
    inference = next(s for s in status.summary(NOW).services if s.name == "inference")
    assert (inference.checks, inference.missed) == (8, 3)  # 90 s without checks: 3 missed
    assert inference.uptime == pytest.approx(8 / 11)
    assert inference.days[-1].uptime == pytest.approx(8 / 11)
    (incident,) = status.summary(NOW).incidents
    assert (incident.service, incident.checks_failed) == ("inference", 3)
    assert (incident.started_at, incident.ended_at) == (before[-1] + timedelta(seconds=30), after[0])
    assert incident.detail == "not checked for 90 s: the stack was not running"


def test_missed_checks_are_counted_on_their_own_days(tmp_path: Path) -> None:
    status = monitor(tmp_path)
    midnight = datetime(2026, 11, 27, tzinfo=UTC)
    record(status, "inference", midnight - timedelta(seconds=90), True)  # then down across midnight
    record(status, "inference", midnight + timedelta(seconds=90), True)  # 5 missed: at -60, -30, 0, 30, 60 s
    record(status, "inference", midnight + timedelta(seconds=120), True)
    days = next(
        s for s in status.summary(midnight + timedelta(seconds=130)).services if s.name == "inference"
    ).days
    assert [(d.date, d.uptime) for d in days][-2:] == [
        ("2026-11-26", pytest.approx(1 / 3)),
        ("2026-11-27", pytest.approx(2 / 5)),
    ]


def test_checks_record_their_interval_so_an_earlier_longer_one_is_not_a_gap(tmp_path: Path) -> None:
    status = monitor(tmp_path)  # 30 s now
    for minutes in (10, 8, 6, 4):  # an earlier run checked every 2 minutes
        check = Check(service="inference", ok=True, latency_ms=5, detail="ready",
                      time=NOW - timedelta(minutes=minutes), interval_s=120)  # fmt: skip
        status.store.append_record(f"status/{check.time:%Y-%m-%d}", check.model_dump(mode="json"))
    record(status, "inference", NOW - timedelta(minutes=2), True)
    record(status, "inference", NOW, True)  # gaps of 2 min under a 30 s interval: missed checks
    inference = next(s for s in status.summary(NOW).services if s.name == "inference")
    assert (inference.checks, inference.missed, inference.uptime) == (6, 3, pytest.approx(6 / 9))


def test_uptime_says_since_when_it_was_measured(tmp_path: Path) -> None:
    status = monitor(tmp_path, history_days=7)
    for minute in range(6, 0, -1):  # six minutes after a first start
        record(status, "inference", NOW - timedelta(minutes=minute), True)
    inference = next(s for s in status.summary(NOW).services if s.name == "inference")
    assert (inference.uptime, inference.checks) == (1.0, 6)
    assert inference.measured_since == NOW - timedelta(minutes=6), "not 'over 7 days'"


TEXT_EXTENTS = """row => {
  const bounds = row.getBoundingClientRect();
  return [...row.querySelectorAll("small")].filter((label) => label.textContent).map((label) => {
    const range = document.createRange();
    range.selectNodeContents(label);
    const text = range.getBoundingClientRect();
    return { text: label.textContent, left: text.left, right: text.right, row_left: bounds.left,
             row_right: bounds.right };
  });
}"""


@pytest.mark.slow
@pytest.mark.parametrize("history_days", [7, 30])
def test_the_daily_bars_are_dated_and_readable_on_a_phone(
    browser: Browser, tmp_path: Path, history_days: int
) -> None:
    status = monitor(tmp_path, history_days=history_days)
    for days_ago in (3, 1, 0):
        record(status, "inference", NOW - timedelta(days=days_ago), True)
    summary = status.summary(NOW).model_dump_json()

    def answer(route: Route) -> None:  # the web UI's files and the status API, no server needed
        path = urlparse(route.request.url).path
        if path == "/api/v1/status":
            route.fulfill(body=summary, content_type="application/json")
        elif path == "/" or path.startswith("/static/"):
            route.fulfill(path=WEB / ("index.html" if path == "/" else path.removeprefix("/static/")))
        else:
            route.fulfill(status=404, json={"error": {"code": "not_found", "message": "not in this test"}})

    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.route("http://cropseg.test/**", answer)
        page.goto("http://cropseg.test/#/status")
        days = page.locator('.service[data-service="inference"] .bars .day')
        days.first.wait_for()
        assert days.count() == history_days
        labels = [days.nth(i).locator("small").inner_text() for i in range(history_days)]
        assert "27" in labels[-1]  # today, 2026-11-27
        if history_days == 7:
            assert all(labels), labels  # a date under every bar
        else:
            assert 4 <= sum(bool(label) for label in labels) <= 8, labels  # every few bars, readable
        # where each date's text is drawn, against the bars' row and the next date
        spans = page.locator('.service[data-service="inference"] .bars').evaluate(TEXT_EXTENTS)
        assert all(span["left"] >= span["row_left"] - 0.5 for span in spans), spans
        assert all(span["right"] <= span["row_right"] + 0.5 for span in spans), spans
        assert all(a["right"] <= b["left"] for a, b in itertools.pairwise(spans)), f"dates overlap: {spans}"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        page.close()


def test_cli_refuses_bad_settings_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORAGE_API_TOKEN", "short")
    assert main(["--port", "8002"]) == 2
    assert "api_token must be at least 16 characters" in capsys.readouterr().err
    monkeypatch.delenv("STORAGE_API_TOKEN")
    assert main(["--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
