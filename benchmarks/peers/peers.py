"""The serving frameworks cropseg's inference service is compared with, and how to reach each one.

Each peer is a server script in this folder that wraps ``workload.Workload`` (the exact work of
``POST /api/v1/segment``) the way its framework's documentation recommends, and a virtualenv of its
own under ``var/peers/<name>`` built from PyPI with the framework's pinned release, ``services/core[onnx]``
and the service's numerics pins (ONNX Runtime, NumPy, Pillow). The harness imports this module from the
project's main venv, so it uses the standard library only.

    python benchmarks/peers/peers.py setup [names...]   # build (or refresh) the virtualenvs
    var/peers/<name>/bin/python benchmarks/peers/<script> --port N

A peer's ``request`` turns one image into the headers and body of its ``POST path``; ``response``
takes the PNG mask back out of the answer body. Frameworks that accept raw bytes over HTTP get the
image as the body and answer with the PNG; those whose protocol is JSON get their documented base64
encoding, whose cost is part of that framework. ``notes`` says why a peer's requirements differ from
the rule. ``bench.py`` beside this checks each server's answer against the workload's, then times it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENVS = REPO / "var" / "peers"
CORE = "services/core[onnx]"  # installed editable, relative to the repository root
# The service's numerics: every peer runs the same ONNX Runtime, NumPy and Pillow as cropseg.
PINS = ("onnxruntime==1.32.0", "numpy==1.26.4", "pillow==10.4.0")
MARKER = ".cropseg-peer-requirements"
PNG = "image/png"


@dataclass(frozen=True)
class Peer:
    """One framework: its venv, its server script, and its HTTP encoding (raw PNG in, PNG out)."""

    name: str  # "litserve"
    title: str  # "LitServe 0.2.19"
    requirements: tuple[str, ...]  # pip specs of the framework, e.g. ("litserve==0.2.19",)
    script: str  # "serve_litserve.py", in this folder
    ready_path: str  # GET path answering 200 once the model is loaded
    path: str  # POST path of one segmentation
    pins: tuple[str, ...] = PINS  # numerics pins; a pin the framework cannot install with floats here
    notes: str = ""  # why a pin floats or an extra requirement is pinned

    def request(self, image: bytes) -> tuple[dict[str, str], bytes]:
        """Headers and body of one segmentation request: the image bytes as the body."""
        return {"Content-Type": PNG, "Accept": PNG}, image

    def response(self, body: bytes) -> bytes:
        """The PNG mask out of the answer body: the body itself."""
        return body

    @property
    def install(self) -> tuple[str, ...]:
        """Everything ``pip install`` gets for this peer's venv (repo-root relative)."""
        return (*self.requirements, "-e", CORE, *self.pins)

    @property
    def script_path(self) -> Path:
        return HERE / self.script


@dataclass(frozen=True)
class V2Peer(Peer):
    """Open Inference Protocol (V2) over REST: one BYTES tensor, base64 by its content type."""

    input_name: str = "image"
    output_name: str = "mask"

    def request(self, image: bytes) -> tuple[dict[str, str], bytes]:
        payload = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(image).decode("ascii")],
                }
            ]
        }
        return {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def response(self, body: bytes) -> bytes:
        outputs = json.loads(body)["outputs"]
        output = next(output for output in outputs if output["name"] == self.output_name)
        return base64.b64decode(output["data"][0])


@dataclass(frozen=True)
class V1B64Peer(Peer):
    """KServe's V1 protocol (TensorFlow Serving's REST): ``{"instances": [{"image": {"b64": ...}}]}``."""

    def request(self, image: bytes) -> tuple[dict[str, str], bytes]:
        payload = {"instances": [{"image": {"b64": base64.b64encode(image).decode("ascii")}}]}
        return {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def response(self, body: bytes) -> bytes:
        return base64.b64decode(json.loads(body)["predictions"][0]["mask"]["b64"])


PEERS: tuple[Peer, ...] = (
    Peer(
        name="litserve",
        title="LitServe 0.2.19",
        requirements=("litserve==0.2.19",),
        script="serve_litserve.py",
        ready_path="/health",
        path="/predict",
    ),
    Peer(
        name="bentoml",
        title="BentoML 1.4.40",
        requirements=("bentoml==1.4.40",),
        script="serve_bentoml.py",
        ready_path="/readyz",
        path="/segment",
    ),
    V2Peer(
        name="mlserver",
        title="MLServer 1.7.1",
        # mlserver 1.7.1 leaves uvloop unpinned, and uvloop 0.22 (Oct 2025) breaks its inference pool
        requirements=("mlserver==1.7.1", "uvloop==0.21.0"),
        script="serve_mlserver.py",
        ready_path="/v2/models/cropseg/ready",
        path="/v2/models/cropseg/infer",
        notes=(
            "uvloop pinned to 0.21.0: with uvloop >= 0.22 every MLServer 1.7.1 inference-pool worker dies "
            "at start (asyncio.get_event_loop() in mlserver/parallel/worker.py raises 'There is no current "
            "event loop'); SeldonIO/MLServer#2286, still open; MLflow pins uvloop<0.22 for the same reason "
            "(mlflow/mlflow#18370). All three numerics pins hold."
        ),
    ),
    V1B64Peer(
        name="kserve",
        title="KServe 0.20.0",
        requirements=("kserve==0.20.0",),
        script="serve_kserve.py",
        ready_path="/v1/models/cropseg",
        path="/v1/models/cropseg:predict",
        notes=(
            "0.20.0, not 0.21.0: kserve 0.21.0 requires pillow>=12.3.0 (kserve's own code never imports "
            "PIL), while cropseg-core requires pillow<11 (alibi-detect), so pip cannot install both "
            "(ResolutionImpossible); 0.20.0 has no pillow requirement and the same model server."
        ),
    ),
    Peer(
        name="ray",
        title="Ray Serve 2.60.0",
        requirements=("ray[serve]==2.60.0",),
        script="serve_ray.py",
        ready_path="/ready",
        path="/segment",
    ),
)


def peer(name: str) -> Peer:
    for candidate in PEERS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no peer {name!r}; known: {', '.join(p.name for p in PEERS)}")


def venv_dir(peer: Peer) -> Path:
    return VENVS / peer.name


def venv_python(peer: Peer) -> Path:
    """The peer's interpreter: ``var/peers/<name>/bin/python`` under the repository root."""
    return venv_dir(peer) / "bin" / "python"


def requirements_hash(peer: Peer) -> str:
    """What the venv was built from; a change of it (or of the interpreter) rebuilds the venv."""
    spec = "\n".join((sys.version.split()[0], *peer.install))
    return hashlib.sha256(spec.encode()).hexdigest()


def ensure_venv(peer: Peer, progress: bool = True) -> Path:
    """Create or refresh ``var/peers/<name>``; a no-op while its marker matches the requirements."""
    folder, python = venv_dir(peer), venv_python(peer)
    marker = folder / MARKER
    wanted = requirements_hash(peer)
    if python.exists() and marker.exists() and marker.read_text().strip() == wanted:
        if progress:
            print(f"{peer.name}: up to date ({folder.relative_to(REPO)})", flush=True)
        return python
    if progress:
        print(f"{peer.name}: building {folder.relative_to(REPO)}: {' '.join(peer.install)}", flush=True)
    marker.unlink(missing_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if not progress:
        command.append("--quiet")
    # setuptools prints general advice for every editable install; it is not about this layout
    environment = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}
    subprocess.run([*command, *peer.install], cwd=REPO, env=environment, check=True)
    marker.write_text(wanted + "\n")
    if progress:
        print(f"{peer.name}: ready", flush=True)
    return python


def main(arguments: list[str]) -> int:
    if not arguments or arguments[0] != "setup":
        print("usage: python benchmarks/peers/peers.py setup [names...]", file=sys.stderr)
        return 2
    chosen = [peer(name) for name in arguments[1:]] or list(PEERS)
    failed = []
    for one in chosen:
        try:
            ensure_venv(one)
        except subprocess.CalledProcessError as error:
            print(f"{one.name}: pip install failed ({error.returncode})", file=sys.stderr, flush=True)
            failed.append(one.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
