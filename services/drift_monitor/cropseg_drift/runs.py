"""Starting runs on demand: a Kubernetes Job inside a cluster, a background worker elsewhere."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from cropseg_core.errors import ConflictError, NotFoundError
from cropseg_core.kube import KubernetesJobs, in_cluster
from cropseg_core.store import BlobStore
from cropseg_drift.kube import RunJobs
from cropseg_drift.lock import is_locked
from cropseg_drift.report import REPORT_ID, new_report_id, report_prefix
from cropseg_drift.runner import RunResult, run
from cropseg_drift.settings import DriftSettings

RunStatus = Literal["running", "succeeded", "failed"]


class RunInProgressError(ConflictError):
    code = "run_in_progress"


class RunState(BaseModel):
    id: str
    backend: Literal["local", "kubernetes"]
    status: RunStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None
    """drift, no_drift, insufficient_data or error, once finished."""
    exit_code: int | None = None
    message: str | None = None
    job: str | None = None
    report: str | None = None
    """Link to the report once it exists."""


class RunLauncher:
    def __init__(self, settings: DriftSettings, store: BlobStore) -> None:
        self.settings = settings
        self.store = store
        self.jobs = (
            RunJobs(KubernetesJobs(settings.cronjob_name, settings.namespace, service="the drift monitor"))
            if in_cluster()
            else None
        )
        self.runs: dict[str, RunState] = {}
        self.guard = threading.Lock()
        self.worker: threading.Thread | None = None

    @property
    def backend(self) -> Literal["local", "kubernetes"]:
        return "kubernetes" if self.jobs else "local"

    def busy(self) -> bool:
        if is_locked(self.store) or (self.worker is not None and self.worker.is_alive()):
            return True
        return self.jobs is not None and self.jobs.active()

    def start(self) -> RunState:
        with self.guard:
            if self.busy():
                raise RunInProgressError(
                    "a drift run is in progress: wait for it (GET /api/v1/drift/runs/{id})"
                )
            run_id = new_report_id(datetime.now(UTC))
            state = RunState(id=run_id, backend=self.backend, status="running", started_at=datetime.now(UTC))
            if self.jobs is not None:
                state.job = self.jobs.create(run_id)
            else:
                self.worker = threading.Thread(
                    target=self._run_here, args=(state,), name=f"drift-{run_id}", daemon=True
                )
                self.worker.start()
            self.runs[run_id] = state
            return state

    def _run_here(self, state: RunState) -> None:
        result: RunResult = run(self.settings, report_id=state.id)
        state.status = "failed" if result.status == "error" else "succeeded"
        state.outcome, state.exit_code, state.message = result.status, result.exit_code, result.message
        state.finished_at = datetime.now(UTC)

    def state(self, run_id: str) -> RunState:
        if not REPORT_ID.fullmatch(run_id):
            raise NotFoundError(f"no drift run {run_id!r}: run ids look like 20261127T144100123456Z")
        state = self.runs.get(run_id)
        if state is not None and self.jobs is not None and state.status == "running":
            state.status = self.jobs.state(run_id) or "running"
        has_report = self.store.exists(report_prefix(run_id) + "report.json")
        if state is None:
            if not has_report:
                raise NotFoundError(f"no drift run {run_id}")
            state = RunState(id=run_id, backend=self.backend, status="succeeded")
        if has_report:
            state.report = f"/api/v1/drift/reports/{run_id}"
            if state.outcome is None:  # a Job's pod exits 1 on drift: the report says what happened
                state.outcome = str(self.store.get_json(report_prefix(run_id) + "report.json")["status"])
        return state
