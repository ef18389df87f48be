"""The status page's data: periodic readiness checks of every service, kept on the volume.

Each check appends one record to ``status/<date>``; the summary reads the last days back
to report each service's current state, daily uptime and incidents (runs of failed
checks), like the seed's hosted uptime page but self-hosted.

While the stack is not running nobody checks anything: a gap of more than two intervals between
two checks (or since the last one) holds the checks that were missed, and they count as failed,
so that an hour when the stack was down is not 100 % uptime. One stack at a time records into a
data folder (the local launcher locks it), so the history is that stack's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from pydantic import BaseModel

from cropseg_core.store import BlobStore, StoreError

log = logging.getLogger(__name__)

State = Literal["up", "down", "unknown"]
SelfCheck = Callable[[], Awaitable[str | None]]


class Check(BaseModel):
    service: str
    ok: bool
    latency_ms: float
    detail: str
    time: datetime
    interval_s: float | None = None
    """The interval of the checks when this one was made (None in records older than it): the
    next check was due that long after."""


class Missed(BaseModel):
    """Checks that were due while nobody checked: the stack was not running."""

    first: datetime
    every: timedelta
    count: int

    def count_within(self, start: datetime, end: datetime) -> int:
        """How many fell in [start, end)."""
        steps = self.every.total_seconds()
        first_k = max(0, math.ceil((start - self.first).total_seconds() / steps))
        end_k = min(self.count, math.ceil((end - self.first).total_seconds() / steps))
        return max(0, end_k - first_k)


class Incident(BaseModel):
    service: str
    started_at: datetime
    ended_at: datetime | None = None
    """None while it lasts."""
    checks_failed: int
    detail: str


class DayUptime(BaseModel):
    date: str
    uptime: float | None
    """Share of passed checks, missed ones counting as failed; None when nothing was checked or
    missed that day."""


class ServiceStatus(BaseModel):
    name: str
    url: str
    state: State
    detail: str
    latency_ms: float | None
    checked_at: datetime | None
    uptime: float | None
    """Share of passed checks over the history window, that is since ``measured_since``; checks
    missed while the stack was not running count as failed."""
    measured_since: datetime | None
    """The oldest check in the window: the uptime covers from then to now (minutes after a first
    start, at most ``days``)."""
    checks: int
    """Checks in the window."""
    missed: int = 0
    """Checks missed in the window while the stack was not running."""
    days: list[DayUptime]


class StatusSummary(BaseModel):
    overall: State
    interval_s: float
    services: list[ServiceStatus]
    incidents: list[Incident]
    """Newest first."""


class StatusMonitor:
    def __init__(
        self,
        store: BlobStore,
        targets: Mapping[str, str],
        self_check: SelfCheck,
        *,
        interval_s: float,
        history_days: int,
        client: httpx.AsyncClient,
        on_check: Callable[[Check], None] = lambda check: None,
    ) -> None:
        self.store = store
        self.targets = dict(targets)
        self.self_check = self_check
        self.interval_s = interval_s
        self.history_days = history_days
        self.client = client
        self.on_check = on_check

    async def check_all(self) -> list[Check]:
        """Check every service now and record the results."""
        checks = await asyncio.gather(
            self._check_self(), *(self._check(n, u) for n, u in self.targets.items())
        )
        for check in checks:
            self.on_check(check)
            try:
                self.store.append_record(f"status/{check.time:%Y-%m-%d}", check.model_dump(mode="json"))
            except StoreError as e:
                log.warning("cannot record a status check: %s", e)
        return list(checks)

    async def _check_self(self) -> Check:
        started = time.perf_counter()
        problem = await self.self_check()
        return Check(
            service="storage",
            ok=problem is None,
            latency_ms=(time.perf_counter() - started) * 1000,
            detail=problem or "ready",
            time=datetime.now(UTC),
            interval_s=self.interval_s,
        )

    async def _check(self, name: str, base_url: str) -> Check:
        started = time.perf_counter()
        try:
            response = await self.client.get(f"{base_url.rstrip('/')}/readyz", timeout=5)
            ok = response.status_code == 200
            detail = "ready" if ok else f"/readyz answered {response.status_code}"
        except httpx.HTTPError as e:
            ok, detail = False, f"unreachable: {type(e).__name__}"
        return Check(
            service=name,
            ok=ok,
            latency_ms=(time.perf_counter() - started) * 1000,
            detail=detail,
            time=datetime.now(UTC),
            interval_s=self.interval_s,
        )

    async def run_forever(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval_s)

    def summary(self, now: datetime | None = None) -> StatusSummary:
        now = now or datetime.now(UTC)
        days = [
            (now - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(self.history_days - 1, -1, -1)
        ]
        by_day = {
            day: [Check.model_validate(r) for r in self.store.read_records(f"status/{day}")] for day in days
        }
        checks = sorted((c for day in days for c in by_day[day]), key=lambda c: c.time)
        urls = {"storage": "(this service)", **self.targets}
        services, incidents = [], []
        for name, url in urls.items():
            own = [c for c in checks if c.service == name]
            missed = _missed(own, now, self.interval_s)
            last = own[-1] if own else None
            services.append(
                ServiceStatus(
                    name=name,
                    url=url,
                    state="unknown" if last is None else "up" if last.ok else "down",
                    detail=last.detail if last else "not checked yet",
                    latency_ms=last.latency_ms if last else None,
                    checked_at=last.time if last else None,
                    uptime=_uptime(own, sum(m.count for m in missed)),
                    measured_since=own[0].time if own else None,
                    checks=len(own),
                    missed=sum(m.count for m in missed),
                    days=[_day_uptime(day, own, missed) for day in days],
                )
            )
            incidents += _incidents(name, own, missed)
        states = {s.state for s in services}
        overall: State = "down" if "down" in states else "unknown" if states == {"unknown"} else "up"
        incidents.sort(key=lambda i: i.started_at, reverse=True)
        return StatusSummary(
            overall=overall, interval_s=self.interval_s, services=services, incidents=incidents
        )


def _missed(checks: list[Check], now: datetime, interval_s: float) -> list[Missed]:
    """The checks due in each gap of more than two intervals after a check (to the next, or to
    ``now``): the stack was not running then."""
    gaps: list[Missed] = []
    for check, following in zip(checks, [*checks[1:], None], strict=False):
        every = timedelta(seconds=check.interval_s or interval_s)
        gap = (following.time if following is not None else now) - check.time
        if gap > 2 * every:
            gaps.append(Missed(first=check.time + every, every=every, count=round(gap / every) - 1))
    return gaps


def _uptime(checks: list[Check], missed: int = 0) -> float | None:
    due = len(checks) + missed
    return sum(c.ok for c in checks) / due if due else None


def _day_uptime(day: str, checks: list[Check], missed: list[Missed]) -> DayUptime:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    end = start + timedelta(days=1)
    within = [c for c in checks if start <= c.time < end]
    return DayUptime(date=day, uptime=_uptime(within, sum(m.count_within(start, end) for m in missed)))


def _incidents(service: str, checks: list[Check], missed: list[Missed]) -> list[Incident]:
    """Runs of consecutive failed or missed checks; one that has not ended yet has ``ended_at``
    None."""
    events = [(c.time, c.ok, c.detail, 1) for c in checks] + [
        (
            m.first,
            False,
            f"not checked for {_duration(m.every * m.count)}: the stack was not running",
            m.count,
        )
        for m in missed
    ]
    incidents: list[Incident] = []
    current: Incident | None = None
    for at, ok, detail, count in sorted(events, key=lambda e: e[0]):
        if not ok and current is None:
            current = Incident(service=service, started_at=at, checks_failed=count, detail=detail)
        elif not ok and current is not None:
            current.checks_failed += count
        elif ok and current is not None:
            current.ended_at = at
            incidents.append(current)
            current = None
    if current is not None:
        incidents.append(current)
    return incidents


def _duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
