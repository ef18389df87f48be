"""On-demand drift runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cropseg_core.web.auth import check_bearer
from cropseg_core.web.errors import error_responses
from cropseg_drift.runs import RunLauncher, RunState

router = APIRouter(prefix="/api/v1/drift/runs", tags=["runs"])


def require_token(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` when a token is configured")
    ] = None,
) -> None:
    check_bearer(request.app.state.settings.api_token, authorization)


def _launcher(request: Request) -> RunLauncher:
    launcher: RunLauncher = request.app.state.launcher
    return launcher


@router.post(
    "",
    status_code=202,
    response_model=RunState,
    dependencies=[Depends(require_token)],
    responses=error_responses(401, 403, 409),
)
async def start_run(request: Request) -> JSONResponse:
    """Start a drift run now: a Job from the CronJob in a cluster, a background worker elsewhere."""
    state = await run_in_threadpool(_launcher(request).start)
    return JSONResponse(
        state.model_dump(mode="json"), status_code=202, headers={"Location": f"/api/v1/drift/runs/{state.id}"}
    )


@router.get("/{run_id}", response_model=RunState, responses=error_responses(404))
def run_state(request: Request, run_id: str) -> RunState:
    """Where a run stands; ``report`` links to its report once written."""
    return _launcher(request).state(run_id)
