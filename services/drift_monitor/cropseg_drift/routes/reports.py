"""Drift reports: list, newest, one, and its files (plots, HTML page)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from cropseg_core.contracts import DriftReport
from cropseg_core.errors import ClientError, NotFoundError
from cropseg_core.store import BlobNotFoundError
from cropseg_core.web.errors import error_responses
from cropseg_drift.deps import Store
from cropseg_drift.metrics import latest_report
from cropseg_drift.report import FILE_NAME, REPORT_ID, read_report, report_prefix

router = APIRouter(prefix="/api/v1/drift/reports", tags=["reports"])

MEDIA_TYPES = {"png": "image/png", "html": "text/html; charset=utf-8", "json": "application/json"}


class ReportSummary(BaseModel):
    id: str
    created_at: str
    status: str = Field(description="drift, no_drift or insufficient_data")
    summary: str
    images: int
    predictions: int
    links: dict[str, str]


class ReportPage(BaseModel):
    items: list[ReportSummary]
    next_cursor: str | None


@router.get("", response_model=ReportPage, responses=error_responses(400))
def list_reports(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> ReportPage:
    """Reports, newest first."""
    if cursor is not None and not REPORT_ID.fullmatch(cursor):
        raise ClientError("invalid cursor: pass the next_cursor of the previous page unchanged")
    keys = [b.key for b in store.list_blobs("drift/reports/") if b.key.endswith("/report.json")]
    ids = sorted((key.split("/")[2] for key in keys), reverse=True)
    if cursor is not None:
        ids = [i for i in ids if i < cursor]
    page = ids[:limit]
    items = []
    for report_id in page:
        report = read_report(store, report_id)
        items.append(
            ReportSummary(**{key: report[key] for key in ReportSummary.model_fields if key in report})
        )
    return ReportPage(items=items, next_cursor=page[-1] if len(ids) > limit else None)


# Served as stored: fields a report of its time did not have stay absent (exclude_unset).
@router.get(
    "/latest", response_model=DriftReport, response_model_exclude_unset=True, responses=error_responses(404)
)
def latest(store: Store) -> DriftReport:
    """The newest report in full."""
    report = latest_report(store)
    if report is None:
        raise NotFoundError(
            "no drift report yet: the drift job has not run (POST /api/v1/drift/runs starts one)"
        )
    return DriftReport.model_validate(report)


@router.get(
    "/{report_id}",
    response_model=DriftReport,
    response_model_exclude_unset=True,
    responses=error_responses(400, 404),
)
def report(store: Store, report_id: str) -> DriftReport:
    """One report in full: checks shaped as Alibi Detect shapes them, plots, links."""
    return DriftReport.model_validate(read_report(store, report_id))


@router.get(
    "/{report_id}/files/{name}",
    response_class=Response,
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}, **error_responses(400, 404)},
)
def report_file(store: Store, report_id: str, name: str) -> Response:
    """A file of the report: a plot (PNG), report.html or report.json."""
    if not REPORT_ID.fullmatch(report_id) or not FILE_NAME.fullmatch(name):
        raise ClientError(f"invalid report file {report_id}/{name}: use the links a report lists")
    try:
        content = store.get(report_prefix(report_id) + name)
    except BlobNotFoundError as e:
        raise NotFoundError(f"report {report_id} has no file {name}") from e
    media_type = MEDIA_TYPES[name.rsplit(".", 1)[1]]
    return Response(
        content, media_type=media_type, headers={"Cache-Control": "public, max-age=86400, immutable"}
    )
