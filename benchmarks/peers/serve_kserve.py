"""The segmentation workload served by KServe 0.20.0's Python model server, REST protocol V1.

``Segmenter`` subclasses ``kserve.Model`` and is started with ``kserve.ModelServer().start([model])``,
as KServe's "Deploy Custom Python Serving Runtime" docs do: ``load`` builds the workload and sets
``ready``; ``predict`` takes the V1 body. The protocol is V1 because that is what KServe documents for
images: its custom-model example posts ``{"instances": [{"image": {"b64": ...}}]}`` to
``/v1/models/<name>:predict``. The mask comes back the same way,
``{"predictions": [{"mask": {"b64": ...}}]}``, the TensorFlow Serving convention for binary values
that V1 follows. As in that example, ``predict`` is ``async``
and does its work inline on the event loop. ``GET /v1/models/cropseg`` answers 200 once the model is
ready; the server only starts listening after ``load``.

KServe's defaults stand except: HTTP at ``--port``; gRPC on a free port; one uvicorn worker (the
default); the per-request latency log off and every logger at warning (a copy of KServe's log
config; by default uvicorn's access log and the latency log write a line per request). KServe
KServe binds 0.0.0.0 with no option to change it, so this server also listens beyond 127.0.0.1. SIGTERM and
SIGINT stop it gracefully (ModelServer installs the handlers).

    var/peers/kserve/bin/python benchmarks/peers/serve_kserve.py --port 8080
"""

from __future__ import annotations

import argparse
import base64
import copy
import socket
import sys
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]
from kserve.logging import KSERVE_LOG_CONFIG, configure_logging  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import Workload  # noqa: E402

NAME = "cropseg"


class Segmenter(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.workload = Workload()
        self.ready = True
        return True

    async def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        image = base64.b64decode(payload["instances"][0]["image"]["b64"])
        mask = self.workload(image)
        return {"predictions": [{"mask": {"b64": base64.b64encode(mask).decode("ascii")}}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    config = copy.deepcopy(KSERVE_LOG_CONFIG)  # KServe's own config, every logger at warning
    for logger in config["loggers"].values():
        logger["level"] = "WARNING"
    configure_logging(config)
    model = Segmenter(NAME)
    server = kserve.ModelServer(
        http_port=arguments.port, grpc_port=free_port(), workers=1, enable_latency_logging=False
    )
    server.start([model])


if __name__ == "__main__":
    main()
