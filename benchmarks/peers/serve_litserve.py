"""The segmentation workload served by LitServe 0.2.19: ``POST /predict``, PNG bytes in, PNG mask out.

A ``litserve.LitAPI`` loads the model in ``setup`` and runs it in ``predict``; ``litserve.LitServer``
serves it, as LitServe's README and docs (lightning.ai/docs/litserve) show. ``decode_request``'s
annotation becomes the FastAPI endpoint's parameter (LitServe's documented way to type requests), so a
raw ``bytes`` body annotation takes the image as the request body; ``encode_response`` returns a
``Response`` with the PNG, as LitServe's docs do for image outputs. One inference worker on the CPU,
one API server process, ``max_batch_size=1`` (no batching), log level warning (uvicorn's access log
off with it). ``GET /health`` answers 200 once the worker has run ``setup``. ``LitServer.run`` shuts
its processes down gracefully on KeyboardInterrupt only (plain SIGTERM kills the main process and
orphans the workers), so SIGTERM is turned into KeyboardInterrupt, as SIGINT is.

    var/peers/litserve/bin/python benchmarks/peers/serve_litserve.py --port 8000
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation as an object.
import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import litserve as ls  # type: ignore[import-not-found]
from fastapi import Body, Response

sys.path.insert(0, str(Path(__file__).parent))
from workload import Workload

PNG = "image/png"


class SegmentAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.workload = Workload()

    def decode_request(self, request: Annotated[bytes, Body(media_type=PNG)]) -> bytes:
        return request

    def predict(self, image: bytes) -> bytes:
        return self.workload(image)

    def encode_response(self, mask: bytes) -> Response:
        return Response(content=mask, media_type=PNG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # LitServe forks its API server, whose uvicorn re-raises SIGTERM after its own shutdown: default there
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    api = SegmentAPI(max_batch_size=1, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(
        host=arguments.host,
        port=arguments.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
