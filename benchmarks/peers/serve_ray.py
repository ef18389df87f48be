"""The segmentation workload served by Ray Serve 2.60.0: ``POST /segment``, PNG bytes in, PNG mask out.

A ``@serve.deployment`` class loads the model in ``__init__`` and is its own HTTP ingress: its
``async __call__`` takes the raw Starlette ``Request`` and returns a Starlette ``Response``, as Ray
Serve's "Set Up FastAPI and HTTP" guide shows for plain HTTP handling (without FastAPI). Like that
guide's examples, the work runs inline in ``__call__``. The app runs with ``serve.run`` on a local Ray
started by this script (no ``ray start``): ``ray.init`` with the box's CPUs (2 here), no dashboard, a
200 MB object store and usage stats off. One replica holding all the CPUs, no ``@serve.batch``,
Serve's and the app's logs at warning with the access log off (``LoggingConfig``); the HTTP proxy on
127.0.0.1 at ``--port``. ``GET /ready`` is answered by the replica itself, so it answers 200 only
once the model is loaded (before that the proxy answers 404). SIGTERM or SIGINT shuts Serve and Ray
down and exits (the script replaces the handler through which Ray's core worker would abort).

    var/peers/ray/bin/python benchmarks/peers/serve_ray.py --port 8000
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import ray  # type: ignore[import-not-found]
from ray import serve
from ray.serve.schema import LoggingConfig  # type: ignore[import-not-found]
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

sys.path.insert(0, str(Path(__file__).parent))
from workload import Workload

PNG = "image/png"
CPUS = len(os.sched_getaffinity(0))
OBJECT_STORE_BYTES = 200 * 1024**2
QUIET = LoggingConfig(log_level="WARNING", enable_access_log=False)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": CPUS}, logging_config=QUIET)
class Segmenter:
    def __init__(self) -> None:
        self.workload = Workload()

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET" and request.url.path == "/ready":
            return PlainTextResponse("ready")
        if request.method != "POST" or request.url.path != "/segment":
            return PlainTextResponse("not found", status_code=404)
        return Response(self.workload(await request.body()), media_type=PNG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=CPUS,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level=logging.WARNING,
    )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this driver's own Serve messages
    # After ray.init, whose core worker installs a handler that aborts the driver on SIGTERM. The replica
    # answers before serve.run returns: a SIGTERM then still lets serve.run finish, then shuts down.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": arguments.host, "port": arguments.port}, logging_config=QUIET)
        app = Segmenter.bind()  # type: ignore[attr-defined]
        serve.run(app, name="cropseg", route_prefix="/", logging_config=QUIET)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
