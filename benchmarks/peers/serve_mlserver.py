"""The segmentation workload served by MLServer 1.7.1 as a custom runtime, over the V2 inference protocol.

``Segmenter`` subclasses ``mlserver.MLModel`` (MLServer's docs: "Custom Inference Runtimes"): ``load``
builds the workload, ``predict`` decodes the one BYTES input and encodes the mask as one BYTES output.
Binary data over REST travels base64-encoded, the way MLServer's "Content Types (and Codecs)" docs
recommend: the request input carries ``"parameters": {"content_type": "base64"}`` (also declared in
the model's metadata), ``self.decode`` picks ``Base64Codec`` from it, and the answer is
``Base64Codec.encode_output``. ``POST /v2/models/cropseg/infer``; ``GET /v2/models/cropseg/ready``
answers 200 once ``load`` has run.

The script writes ``settings.json`` and ``cropseg/model-settings.json`` into a temporary folder, then
does what ``mlserver start <folder>`` does, in-process, so that the folder is removed when it stops
(MLServer stops gracefully on SIGTERM and SIGINT). MLServer's defaults stand except: REST on
127.0.0.1 at ``--port``; its gRPC and metrics servers on free ports (MLServer always runs gRPC; metrics
stay on as in a default deployment); ``debug`` off, which turns uvicorn's access log off, and its loggers
at warning. Inference runs in MLServer's default pool of one worker process
(``parallel_workers=1``), and adaptive batching stays off (``max_batch_size`` 0, the default). Its
venv pins uvloop 0.21.0: with uvloop 0.22 or later that worker dies at start (see ``peers.py``).

    var/peers/mlserver/bin/python benchmarks/peers/serve_mlserver.py --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
from pathlib import Path

from mlserver import MLModel, MLServer  # type: ignore[import-not-found]
from mlserver.cli.serve import load_settings  # type: ignore[import-not-found]
from mlserver.codecs import Base64Codec  # type: ignore[import-not-found]
from mlserver.logging import configure_logger  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]
from mlserver.utils import install_uvloop_event_loop  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import Workload  # noqa: E402

NAME = "cropseg"
BASE64 = {"content_type": Base64Codec.ContentType}


class Segmenter(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self.workload = Workload()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        [image] = self.decode(payload.inputs[0], default_codec=Base64Codec)
        mask = self.workload(image)
        return InferenceResponse(model_name=self.name, outputs=[Base64Codec.encode_output("mask", [mask])])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_settings(folder: Path, host: str, port: int) -> None:
    warning = {"level": "WARNING"}
    settings = {
        "host": host,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
        "parallel_workers": 1,
        # incremental: only the levels change; MLServer's and uvicorn's handlers stay as they are
        "logging_settings": {
            "version": 1,
            "incremental": True,
            "loggers": {"mlserver": warning, "uvicorn.error": warning, "uvicorn.access": warning},
        },
    }
    model = {
        "name": NAME,
        "implementation": f"{Path(__file__).stem}.Segmenter",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": BASE64}],
        "outputs": [{"name": "mask", "datatype": "BYTES", "shape": [1], "parameters": BASE64}],
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / NAME).mkdir()  # MLServer expects the model's folder to bear its name
    (folder / NAME / "model-settings.json").write_text(json.dumps(model, indent=2))


async def serve(folder: Path) -> None:
    """``mlserver start <folder>``: the CLI's own settings loader, then the server."""
    settings, models = await load_settings(str(folder))
    await MLServer(settings).start(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cropseg-mlserver-") as folder:
        write_settings(Path(folder), arguments.host, arguments.port)
        configure_logger()
        install_uvloop_event_loop()
        asyncio.run(serve(Path(folder)))


if __name__ == "__main__":
    main()
