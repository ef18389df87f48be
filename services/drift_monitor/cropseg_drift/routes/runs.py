"""On-demand drift runs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cropseg_core.web.auth import WRITE
from cropseg_core.web.errors import error_responses
from cropseg_drift.deps import Launcher
from cropseg_drift.runs import RunState

router = APIRouter(prefix="/api/v1/drift/runs", tags=["runs"])


@router.post(
    "",
    status_code=202,
    response_model=RunState,
    dependencies=WRITE,
    responses=error_responses(401, 403, 409),
)
async def start_run(launcher: Launcher) -> JSONResponse:
    """Start a drift run now: a Job from the CronJob in a cluster, a background worker elsewhere."""
    state = await run_in_threadpool(launcher.start)
    return JSONResponse(
        state.model_dump(mode="json"), status_code=202, headers={"Location": f"/api/v1/drift/runs/{state.id}"}
    )


@router.get("/{run_id}", response_model=RunState, responses=error_responses(404))
def run_state(launcher: Launcher, run_id: str) -> RunState:
    """Where a run stands; ``report`` links to its report once written."""
    return launcher.state(run_id)
