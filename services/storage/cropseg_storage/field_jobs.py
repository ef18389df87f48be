"""Segmentations of fields asked for over HTTP: queued once however many ask at once, cancelled,
and handed to whatever starts workers.

Storage and the worker meet only through the store's keys (:mod:`cropseg_core.fields`). Asking
writes ``job.json`` as ``queued``, then calls the :class:`FieldLauncher` held on the app's state:
:class:`LocalLauncher` starts nothing (``make up``'s worker process polls the store for queued
jobs); the Kubernetes one creates a Job from the chart's template. job.json reads ``queued``
before anything is launched, so a worker never starts before its job exists.

Two requests that ask at the same moment must not both queue (two workers would race on one
field's results). A lock would hold only within one process, and storage may run replicas (S3
store), so the commit point is the store's create-only write: each ask creates the claim
``fields/<id>/segment-claims/<token>``, named after the job it replaces (its ``requested``
time, or ``first``). Of the asks that read the same finished job exactly one creates the claim
and queues; the others answer 409. The next ask reads the new job, so it names a new claim.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from cropseg_core.errors import ConflictError, NotFoundError, UnavailableError
from cropseg_core.fields import (
    ACTIVE,
    FIELDS_PREFIX,
    RESULTS,
    CoverRequest,
    FieldCatalogue,
    FieldJob,
    check_field_id,
)

log = logging.getLogger(__name__)

Backend = Literal["local", "kubernetes"]
CLAIMS = "segment-claims"


class JobActiveError(ConflictError):
    code = "job_active"


class NoActiveJobError(ConflictError):
    code = "no_active_job"


class ResultNotFoundError(NotFoundError):
    code = "result_not_found"


class LaunchError(UnavailableError):
    """The launcher could not start a worker (the Kubernetes API refused or did not answer)."""

    code = "launch_failed"


@runtime_checkable
class FieldLauncher(Protocol):
    """Starts what segments a field whose ``job.json`` already reads ``queued``."""

    @property
    def backend(self) -> Backend:
        """Who runs the jobs it launches, recorded in each job."""
        ...

    def launch(self, field_id: str) -> str | None:
        """Start a worker for the field; the name of the Kubernetes Job, or None where there is
        none. Raise :class:`LaunchError` saying why when it cannot."""
        ...


class LocalLauncher:
    """``make up``: the worker process (``cropseg field-worker``) polls the store for queued
    jobs, so launching starts nothing."""

    @property
    def backend(self) -> Backend:
        return "local"

    def launch(self, field_id: str) -> str | None:
        return None


def field_folders(fields: FieldCatalogue, field_id: str | None = None) -> dict[str, set[str]]:
    """The names in each field's folder (``field.json``, ``job.json``, ``cancel``,
    ``result/mask.tif``...), by field id: one listing of the store for every field, or for one."""
    prefix = FIELDS_PREFIX if field_id is None else f"{FIELDS_PREFIX}{check_field_id(field_id)}/"
    folders: dict[str, set[str]] = {}
    for key in fields.store.list_keys(prefix):
        parts = key.split("/", 2)
        if len(parts) == 3:
            folders.setdefault(parts[1], set()).add(parts[2])
    return folders


def claim_key(field_id: str, replaced: FieldJob | None) -> str:
    token = "first" if replaced is None else replaced.requested.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{FIELDS_PREFIX}{check_field_id(field_id)}/{CLAIMS}/{token}"


def _describe(job: FieldJob) -> str:
    if job.status == "segmenting":
        return f"segmenting ({job.percent:.0f} %)"
    return job.status


def request_segmentation(
    fields: FieldCatalogue, launcher: FieldLauncher, field_id: str, cover: CoverRequest
) -> FieldJob:
    """Queue the field's segmentation and launch its worker; :class:`JobActiveError` while one is
    queued or under way (one that stopped reporting counts as failed: asking again resumes it)."""
    fields.get(field_id)
    replaced = fields.job(field_id)
    if replaced is not None and (seen := replaced.as_seen()).status in ACTIVE:
        raise JobActiveError(
            f"field {field_id} is already {_describe(seen)}: wait for it to end, or cancel it "
            f"(POST /api/v1/fields/{field_id}/cancel) and ask again"
        )
    now = datetime.now(UTC)
    if not fields.store.put_if_absent(claim_key(field_id, replaced), now.isoformat().encode()):
        raise JobActiveError(
            f"field {field_id} was asked to segment by another request at this moment: "
            "follow that one (GET the field)"
        )
    fields.clear_cancel(field_id)  # a cancel asked of an earlier job must not stop this one
    job = FieldJob(status="queued", cover=cover, requested=now, backend=launcher.backend)
    fields.put_job(field_id, job)
    try:
        name = launcher.launch(field_id)
    except LaunchError as e:
        fields.put_job(
            field_id,
            job.model_copy(update={"status": "failed", "finished": datetime.now(UTC), "error": str(e)}),
        )
        raise
    if name is not None:
        job = job.model_copy(update={"job": name})
        current = fields.job(field_id)
        if current is not None and current.status == "queued" and current.requested == job.requested:
            fields.put_job(field_id, job)  # else a worker has claimed it already: its record stands
    log.info("field %s: segmentation queued (%s%s)", field_id, job.backend, f", job {name}" if name else "")
    return job


def cancel_segmentation(fields: FieldCatalogue, field_id: str) -> FieldJob:
    """Cancel the field's queued or running segmentation: a queued one is cancelled at once, a
    running one is asked to stop (the worker stops at its next window, and says so in job.json).
    :class:`NoActiveJobError` when nothing is queued or running."""
    fields.get(field_id)
    job = fields.job(field_id)
    seen = job.as_seen() if job is not None else None
    if job is None or seen is None or seen.status not in ACTIVE:
        state = "was never segmented" if seen is None else f"is {seen.status}"
        raise NoActiveJobError(f"field {field_id} {state}: there is no segmentation to cancel")
    # The marker first: a worker claiming the queued job at this very moment stops at its first window.
    fields.ask_cancel(field_id)
    if job.status == "queued":
        job = job.model_copy(update={"status": "cancelled", "finished": datetime.now(UTC)})
        fields.put_job(field_id, job)
    log.info("field %s: cancel asked (%s)", field_id, job.status)
    return job


def delete_field(fields: FieldCatalogue, field_id: str) -> None:
    """Delete the field; a segmentation under way is asked to stop first. Nothing of the field
    stays: a worker still running finds the field gone at its next window (the record goes first)
    and stops without writing again."""
    fields.get(field_id)
    job = fields.job(field_id)
    if job is not None and job.as_seen().status in ACTIVE:
        fields.ask_cancel(field_id)
    fields.delete(field_id)


def result_missing(field_id: str, name: str, job: FieldJob | None) -> ResultNotFoundError:
    """The 404 of a result the store does not hold, saying what to do about it."""
    segment = f"POST /api/v1/fields/{field_id}/segment"
    if name not in RESULTS:
        return ResultNotFoundError(f"no result {name!r}: a field's results are {', '.join(RESULTS)}")
    if job is None:
        return ResultNotFoundError(f"field {field_id} is not segmented yet: {segment} first")
    seen = job.as_seen()
    if seen.status in ACTIVE:
        return ResultNotFoundError(
            f"field {field_id} is {_describe(seen)}: {name} is there once it is done (GET the field)"
        )
    if seen.status == "failed":
        return ResultNotFoundError(
            f"the segmentation of field {field_id} failed ({seen.error}): {segment} again"
        )
    if seen.status == "cancelled":
        return ResultNotFoundError(f"the segmentation of field {field_id} was cancelled: {segment} again")
    return ResultNotFoundError(f"the segmentation of field {field_id} made no {name}: {segment} again")
