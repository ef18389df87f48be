"""On-demand drift runs inside a cluster: a Job created from the drift CronJob
(:mod:`cropseg_core.kube`), labelled with the run id and told to write its report under it."""

from __future__ import annotations

import re
from typing import Any

from cropseg_core.kube import JobState, KubernetesJobs, job_from_cronjob

RUN_ID_LABEL = "cropseg.io/drift-run"
REPORT_ID_ENV = "DRIFT_REPORT_ID"


def run_suffix(run_id: str) -> str:
    """The Job name's suffix: the run id's last 14 digits."""
    return re.sub(r"[^0-9]", "", run_id)[-14:]


def run_job(cronjob: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The Job of run ``run_id`` from the drift CronJob (as the API returns it)."""
    return job_from_cronjob(cronjob, run_suffix(run_id), {REPORT_ID_ENV: run_id}, {RUN_ID_LABEL: run_id})


class RunJobs:
    """Drift runs as Jobs: started, and read back by run id."""

    def __init__(self, jobs: KubernetesJobs) -> None:
        self.jobs = jobs

    def create(self, run_id: str) -> str:
        return self.jobs.create(run_suffix(run_id), {REPORT_ID_ENV: run_id}, {RUN_ID_LABEL: run_id})

    def active(self) -> bool:
        """Whether a run started through the API is still running (scheduled runs take the lock)."""
        return self.jobs.active({})

    def state(self, run_id: str) -> JobState | None:
        return self.jobs.state({RUN_ID_LABEL: run_id})
