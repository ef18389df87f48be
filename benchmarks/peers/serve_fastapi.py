"""The segmentation workload in a bare FastAPI app on uvicorn: what a team writes in an afternoon.

``POST /segment``, PNG bytes in, PNG mask out; the work runs in FastAPI's thread pool (a sync
route), one uvicorn worker, no access log. No admission control, no limits, no metrics: the floor
any serving framework is measured against. Runs in the project's own venv.

    .venv/bin/python benchmarks/peers/serve_fastapi.py --port 8000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).parent))
from workload import Workload

app = FastAPI()
workload: Workload | None = None


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": workload is not None}


@app.post("/segment")
async def segment(request: Request) -> Response:
    assert workload is not None
    body = await request.body()
    return Response(await run_in_threadpool(workload, body), media_type="image/png")


def main() -> None:
    global workload
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    workload = Workload()
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
