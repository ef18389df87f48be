"""Drift reports, read from the drift-monitor API so the UI needs only this service, and the UI's
writes -- "Run now" (``POST /api/v1/drift/runs``) and choosing the reference (``PUT``/``DELETE
/api/v1/drift/reference/{layout}``) -- forwarded with the caller's token, which drift checks.

In a cluster the Ingress sends ``/api/v1/drift`` straight to drift-monitor; locally (no
Ingress) this route forwards the same paths, so the UI works unchanged in both.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request, Response

from cropseg_core.contracts import DriftReport
from cropseg_core.errors import ClientError, GatewayTimeoutError, UnavailableError
from cropseg_core.store import InvalidKeyError, check_key
from cropseg_core.web.bodies import read_limited_body
from cropseg_core.web.errors import error_responses

router = APIRouter(tags=["drift"])

FORWARDED_HEADERS = ("content-type", "cache-control", "etag", "last-modified")


class DriftUnavailableError(UnavailableError):
    code = "drift_monitor_unavailable"


REFERENCE_BODY_BYTES = 4096
"""A reference choice is a few fields; a larger body is refused before it is forwarded."""


def _token(request: Request) -> dict[str, str]:
    authorization = request.headers.get("authorization")
    return {"authorization": authorization} if authorization else {}


def _plain(path: str) -> str:
    try:
        return check_key(path)  # plain names only: no "..", no control characters
    except InvalidKeyError as e:
        raise ClientError(f"invalid drift path {path!r}: use the links the drift API returns") from e


@router.post(
    "/api/v1/drift/runs",
    status_code=202,
    response_class=Response,
    responses=error_responses(401, 403, 409, 502, 503, 504),
)
async def start_drift_run(request: Request) -> Response:
    """Start a drift run now (the web UI's "Run now"): forwarded with the caller's token, which
    the drift monitor checks; 409 while a run is in progress."""
    return await _forward(request, "POST", "runs", _token(request))


@router.put(
    "/api/v1/drift/reference/{layout}",
    response_class=Response,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 502, 503, 504),
)
async def choose_drift_reference(layout: str, request: Request) -> Response:
    """Use a report's images (``{"report_id": ...}``) or a period's uploads as the layout's drift
    reference (the web UI's "Use these images as the reference"), with the caller's token."""
    body = await read_limited_body(request, REFERENCE_BODY_BYTES)  # a few fields, read under the pace rules
    headers = {**_token(request), "content-type": "application/json"}
    return await _forward(request, "PUT", f"reference/{_plain(layout)}", headers, body)


@router.delete(
    "/api/v1/drift/reference/{layout}",
    response_class=Response,
    responses=error_responses(400, 401, 403, 502, 503, 504),
)
async def reset_drift_reference(layout: str, request: Request) -> Response:
    """Compare the layout with the model's training images again, with the caller's token."""
    return await _forward(request, "DELETE", f"reference/{_plain(layout)}", _token(request))


# The reports the UI reads, with their schema in these docs too; the bytes pass unchanged, so
# storage serves whatever report the drift monitor of the day serves.
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DriftReport, "description": "The report, as drift-monitor serves it"}
}


@router.get(
    "/api/v1/drift/reports/latest",
    response_class=Response,
    responses={**REPORT_RESPONSES, **error_responses(404, 502, 503, 504)},
)
async def latest_drift_report(request: Request) -> Response:
    """The newest drift report in full (forwarded from the drift monitor)."""
    return await _forward(request, "GET", "reports/latest", {})


@router.get(
    "/api/v1/drift/reports/{report_id}",
    response_class=Response,
    responses={**REPORT_RESPONSES, **error_responses(400, 404, 502, 503, 504)},
)
async def drift_report(report_id: str, request: Request) -> Response:
    """One drift report in full (forwarded from the drift monitor)."""
    return await _forward(request, "GET", _plain(f"reports/{report_id}"), {})


@router.get(
    "/api/v1/drift/{path:path}", response_class=Response, responses=error_responses(400, 502, 503, 504)
)
async def drift(path: str, request: Request) -> Response:
    """Forward a read of the drift-monitor API (reports, plots, latest result, references)."""
    return await _forward(request, "GET", _plain(path), {})


async def _forward(
    request: Request, method: str, path: str, headers: dict[str, str], content: bytes | None = None
) -> Response:
    client: httpx.AsyncClient = request.app.state.outgoing
    base_url = str(request.app.state.settings.drift_url).rstrip("/")
    try:
        upstream = await client.request(
            method, f"{base_url}/api/v1/drift/{path}", params=request.query_params, headers=headers,
            content=content,
        )  # fmt: skip
    except httpx.TimeoutException as e:
        raise GatewayTimeoutError(f"the drift monitor at {base_url} did not answer in time") from e
    except httpx.TransportError as e:
        raise DriftUnavailableError(
            f"the drift monitor at {base_url} is not reachable: start it, or set STORAGE_DRIFT_URL"
        ) from e
    forwarded = {name: upstream.headers[name] for name in FORWARDED_HEADERS if name in upstream.headers}
    return Response(upstream.content, status_code=upstream.status_code, headers=forwarded)
