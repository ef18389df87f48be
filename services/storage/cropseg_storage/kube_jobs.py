"""Field segmentations as Kubernetes Jobs: each one created from the chart's suspended
field-worker CronJob (``STORAGE_FIELDS__WORKER_CRONJOB``, in the pod's namespace), told which
field to segment (``FIELD_ID``) and labelled with it, as drift runs are (:mod:`cropseg_core.kube`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cropseg_core.fields import check_field_id
from cropseg_core.kube import KubernetesError, KubernetesJobs, in_cluster, job_from_cronjob
from cropseg_storage.field_jobs import Backend, FieldLauncher, LaunchError, LocalLauncher
from cropseg_storage.settings import StorageSettings

FIELD_ID_ENV = "FIELD_ID"
"""The worker's command line reads it: ``cropseg field-worker ... --field $(FIELD_ID)``."""
FIELD_LABEL = "cropseg.io/field"


def job_suffix(field_id: str, now: datetime) -> str:
    """``<first 12 digits of the id>-<UTC time to the second>``: each segmentation of a field its
    own Job (a rerun after a failure too), the Job's name within 63 characters."""
    return f"{check_field_id(field_id)[:12]}-{now.astimezone(UTC):%Y%m%d%H%M%S}"


def field_job(cronjob: dict[str, Any], field_id: str, now: datetime) -> dict[str, Any]:
    """The Job segmenting ``field_id``, from the field-worker CronJob (as the API returns it)."""
    return job_from_cronjob(
        cronjob, job_suffix(field_id, now), {FIELD_ID_ENV: field_id}, {FIELD_LABEL: field_id}
    )


class KubernetesLauncher:
    """Starts a Job per segmentation; the Job's worker claims the queued job.json."""

    def __init__(self, jobs: KubernetesJobs) -> None:
        self.jobs = jobs

    @property
    def backend(self) -> Backend:
        return "kubernetes"

    def launch(self, field_id: str) -> str:
        suffix = job_suffix(field_id, datetime.now(UTC))
        try:
            return self.jobs.create(suffix, {FIELD_ID_ENV: field_id}, {FIELD_LABEL: field_id})
        except KubernetesError as e:
            raise LaunchError(
                f"the field worker's Job could not be started ({e}); the chart's CronJob "
                f"{self.jobs.cronjob_name} and storage's Role allow it: ask an operator, then ask again"
            ) from e


def field_launcher(settings: StorageSettings) -> FieldLauncher:
    """Kubernetes Jobs inside a cluster (as drift runs); elsewhere the local worker's polling."""
    if not in_cluster():
        return LocalLauncher()
    return KubernetesLauncher(KubernetesJobs(settings.fields.worker_cronjob, None, service="storage"))
