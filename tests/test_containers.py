"""The service images on a real engine: what they hold, the compose stack end to end with a fault,
and every workload of the rendered Helm chart run with its own pod spec by ``podman kube play``.

The images are the ones ``make images`` built (``make test`` builds them first; an engine and a base
image come from scripts/container-engine.sh). Without an engine or the images these tests fail;
`make test CONTAINERS=no` leaves them out, reported as skipped (conftest.py). Everything listens on
127.0.0.1 or on a private podman network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from cropseg_core.masks import encode_png
from cropseg_core.processes import free_port
from cropseg_model.synth import generate_tile

pytestmark = [pytest.mark.slow, pytest.mark.containers]

REPO = Path(__file__).resolve().parents[1]
TAG = yaml.safe_load((REPO / "charts/cropseg/Chart.yaml").read_text())["appVersion"]
BUDGET_MB = {"inference": 280, "storage": 280, "drift-monitor": 850, "batch": 480}
IMAGES = {service: f"cropseg/{service}:{TAG}" for service in BUDGET_MB}


def run(
    *command: str, timeout: float = 300, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def missing(what: str) -> None:
    """Fail, wherever the tests run (CONTAINERS=no skips this module before any fixture runs)."""
    pytest.fail(f"{what}: run `make images` (as root the first time), or: make test CONTAINERS=no")


@pytest.fixture(scope="module")
def docker(docker_binary: str) -> str:
    """The engine, with the three images `make images` built (make test builds them first)."""
    absent = [i for i in IMAGES.values() if run(docker_binary, "image", "inspect", i, check=False).returncode]
    if absent:
        missing(f"no image {', '.join(absent)}")
    return docker_binary


@pytest.fixture
def http() -> Iterator[Callable[[str], httpx.Client]]:
    """Clients to a base URL, closed after the test whatever happens."""
    opened: list[httpx.Client] = []

    def client(base_url: str) -> httpx.Client:
        opened.append(httpx.Client(base_url=base_url, timeout=120))
        return opened[-1]

    yield client
    for each in opened:
        each.close()


def png(pixels: np.ndarray) -> bytes:
    return encode_png(pixels)


def tile_png(seed: int, index: int) -> bytes:
    return png(generate_tile(seed, index)[0].rgb)


def wait_until(what: str, check: Any, timeout_s: float = 90, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass  # not up yet: refused, or a starting Prometheus's plain-text 503 instead of JSON
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(every_s)


# ---------------------------------------------------------------------------------------------
# The images themselves

INSPECT = """
import importlib.util as u, json, os, shutil
print(json.dumps({
    "compilers": [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)],
    "modules": {m: u.find_spec(m) is not None for m in ("torch", "alibi_detect", "onnxruntime",
                "cropseg_storage", "cropseg_inference", "cropseg_batch", "rasterio", "cv2", "pip")},
    "uid": os.getuid(), "gid": os.getgid(),
}))
"""


@pytest.mark.parametrize("service", list(IMAGES))
def test_image_is_within_budget_non_root_and_holds_only_its_service(docker: str, service: str) -> None:
    image = IMAGES[service]
    facts = json.loads(run(docker, "image", "inspect", image).stdout)[0]
    size_mb = facts["Size"] / 1e6
    assert size_mb <= BUDGET_MB[service], f"{image}: {size_mb:.0f} MB, budget {BUDGET_MB[service]} MB"
    assert facts["Config"]["User"] == "10001:10001"
    inside = json.loads(
        run(docker, "run", "--rm", "--read-only", "--entrypoint", "python", image, "-c", INSPECT).stdout
    )
    assert inside["compilers"] == [], "no compilers in a final stage"
    assert (inside["uid"], inside["gid"]) == (10001, 10001)
    modules = inside["modules"]
    assert not modules["torch"], "torch is for training only"
    assert not modules["pip"], "pip stays in the build stage"
    assert modules["alibi_detect"] == modules["cv2"] == (service == "drift-monitor")
    assert modules["onnxruntime"] == (service in ("inference", "batch"))
    assert modules["rasterio"] == modules["cropseg_batch"] == (service == "batch")
    assert modules["cropseg_inference"] == (service == "inference"), "each image holds only its own service"
    assert modules["cropseg_storage"] == (service == "storage")
    arguments = ["serve", "--help"] if service == "drift-monitor" else ["--help"]
    assert run(docker, "run", "--rm", "--read-only", image, *arguments).returncode == 0


@pytest.mark.parametrize(("service", "arguments"), [("storage", []), ("drift-monitor", ["serve"])])
def test_a_data_folder_the_service_cannot_write_stops_it_with_one_clear_line(
    docker: str, tmp_path: Path, service: str, arguments: list[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)  # a bind mount owned by someone else than uid 10001
    mounts = ["--read-only", "--tmpfs", "/tmp", "-v", f"{folder}:/data"]
    result = run(docker, "run", "--rm", *mounts, IMAGES[service], *arguments, "--data", "/data", check=False)
    assert result.returncode == 2, result.stderr
    assert "the data folder /data is not writable by this process (uid 10001, gid 10001)" in result.stderr
    assert "chown it to the service's user" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_batch_image_segments_an_orthomosaic_read_only(docker: str, tmp_path: Path) -> None:
    """GDAL inside rasterio's wheel reads and writes GeoTIFF and COG in the slimmed image."""
    from cropseg_batch.fields import write_field

    tmp_path.chmod(0o777)  # the container's user (10001) writes the mask beside the field
    write_field(tmp_path / "field.tif", 700)
    mounts = ["--read-only", "--tmpfs", "/tmp", "-v", f"{tmp_path}:/work"]
    result = run(docker, "run", "--rm", *mounts, IMAGES["batch"], "segment-raster", "/work/field.tif",
                 "/work/out/mask.tif", check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "700 x 700 px" in result.stdout
    names = {path.name for path in (tmp_path / "out").iterdir()}
    covers = {f"mask.cover.{kind}" for kind in ("csv", "geojson", "gpkg")}  # gpkg: pyogrio ships in the image
    assert names == {"mask.tif", "mask.preview.png", "mask.cell-counts.tif", *covers}


# ---------------------------------------------------------------------------------------------
# Compose: the stack end to end, then inference killed under load


class Compose:
    def __init__(self, docker: str, ports: dict[str, int]) -> None:
        self.docker = docker
        self.ports = ports
        self.env = {
            **os.environ,
            "CROPSEG_INFERENCE_PORT": str(ports["inference"]),
            "CROPSEG_STORAGE_PORT": str(ports["storage"]),
            "CROPSEG_DRIFT_PORT": str(ports["drift-monitor"]),
            "DRIFT_EVERY_S": "3600",
        }
        self.env.pop("CROPSEG_API_TOKEN", None)

    def __call__(
        self, *arguments: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.docker, "compose", "-p", "cropseg-test", *arguments, timeout=timeout, check=check,
                   env=self.env, cwd=REPO)  # fmt: skip

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def state(self, service: str) -> dict[str, Any]:
        container = self("ps", "-a", "-q", service).stdout.strip()
        return dict(json.loads(run(self.docker, "inspect", container).stdout)[0]["State"])


@pytest.fixture(scope="module")
def compose(docker: str) -> Iterator[Compose]:
    if run(docker, "compose", "version", check=False).returncode != 0:
        missing("no compose v2 plugin (docker compose)")
    stack = Compose(docker, {name: free_port() for name in ("inference", "storage", "drift-monitor")})
    stack("down", "-v", "--remove-orphans", check=False)
    try:
        stack("up", "-d", "--wait", "--wait-timeout", "120", timeout=180)
        yield stack
    finally:
        logs = stack("logs", "--no-color", check=False).stdout
        (REPO / "var/test-artifacts").mkdir(parents=True, exist_ok=True)
        (REPO / "var/test-artifacts/compose.log").write_text(logs)
        stack("down", "-v", "--remove-orphans", check=False)


def test_compose_stack_end_to_end_with_a_generated_token(
    compose: Compose, http: Callable[[str], httpx.Client], prometheus_binary: str, tmp_path: Path
) -> None:
    token = compose("exec", "-T", "storage", "cat", "/data/.cropseg/api-token").stdout.strip()
    assert len(token) >= 32, "a token is generated on first start and shared through the volume"
    auth = {"Authorization": f"Bearer {token}"}
    storage = http(compose.url("storage"))
    refused = storage.post("/api/v1/images", content=tile_png(61, 0), headers={"content-type": "image/png"})
    assert refused.status_code == 401, refused.text
    ids = []
    for index in range(3):
        tile, encoded, ext = generate_tile(61, index)
        files = {"file": (f"plot.{ext}", encoded), "label": ("truth.png", encode_png(tile.mask))}
        created = storage.post("/api/v1/images", files=files, headers=auth)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        segmented = storage.post(f"/api/v1/images/{ids[-1]}/segmentation", headers=auth)
        assert segmented.status_code == 201, segmented.text  # storage -> inference over compose's network
        assert 0 < segmented.json()["vegetation_fraction"] < 1
    # The drift job's command, as the CronJob runs it, on the shared volume.
    drift = compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "cropseg-drift", "drift-job",
                    "run", "--data", "/data", "--no-progress", timeout=300)  # fmt: skip
    assert "insufficient_data" in drift.stdout or "no_drift" in drift.stdout, drift.stdout
    assert "None of PyTorch" not in drift.stderr, (
        "transformers' import notice reads like an error in a job log"
    )
    latest = httpx.get(f"{compose.url('drift-monitor')}/api/v1/drift/reports/latest", timeout=30)
    assert latest.status_code == 200, latest.text
    through_storage = storage.get("/api/v1/drift/reports/latest")  # what the UI reads, via storage
    assert through_storage.status_code == 200
    assert through_storage.json() == latest.json()
    # A real Prometheus scrapes the three published /metrics.
    config = tmp_path / "prometheus.yml"
    targets = [f"127.0.0.1:{port}" for port in compose.ports.values()]
    scrape = {"job_name": "cropseg", "static_configs": [{"targets": targets}]}
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
    port = free_port()
    prometheus = subprocess.Popen(
        [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query"

        def scraped() -> bool:
            up = httpx.get(query, params={"query": "sum(up)"}).json()["data"]["result"]
            uploads = httpx.get(query, params={"query": "sum(cropseg_storage_uploads_total)"}).json()["data"][
                "result"
            ]
            return bool(
                up and float(up[0]["value"][1]) == 3 and uploads and float(uploads[0]["value"][1]) >= 3
            )

        wait_until("Prometheus scrapes all three services", scraped, timeout_s=60)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
    # The drift job's loop stops on SIGTERM at once (exit 0), not after docker's 10 s kill (137).
    compose("stop", "-t", "30", "drift-job")
    state = compose.state("drift-job")
    assert state["ExitCode"] == 0, state


def test_compose_inference_killed_under_load_loses_no_upload_and_recovers(compose: Compose) -> None:
    token = compose("exec", "-T", "storage", "cat", "/data/.cropseg/api-token").stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    big = png(np.ascontiguousarray(np.tile(generate_tile(62, 0)[0].rgb, (4, 4, 1))))  # a few seconds each
    acknowledged: list[str] = []
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=compose.url("storage"), timeout=120) as http:
            index = 0
            while not stop.is_set():
                body = png(np.ascontiguousarray(np.roll(generate_tile(63, worker)[0].rgb, index, axis=1)))
                created = http.post(
                    "/api/v1/images", content=body, headers={**auth, "content-type": "image/png"}
                )
                assert created.status_code == 201, created.text
                acknowledged.append(created.json()["id"])
                answers.append(http.post(f"/api/v1/images/{created.json()['id']}/segmentation", headers=auth))
                index += 1

    with httpx.Client(base_url=compose.url("storage"), timeout=120, headers=auth) as http:
        big_id = http.post("/api/v1/images", content=big, headers={"content-type": "image/png"}).json()["id"]
        workers = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for worker in workers:
            worker.start()
        pending: dict[str, httpx.Response] = {}
        slow = threading.Thread(
            target=lambda: pending.setdefault("r", http.post(f"/api/v1/images/{big_id}/segmentation"))
        )
        slow.start()
        time.sleep(1.5)  # requests are at inference now
        compose("kill", "inference")
        slow.join(timeout=120)
        assert pending["r"].status_code in (502, 503), pending["r"].text
        assert pending["r"].json()["error"]["code"] in ("inference_unavailable", "inference_failed")
        down = http.post(f"/api/v1/images/{big_id}/segmentation")
        assert down.status_code == 503, down.text
        assert down.headers.get("retry-after")
        assert "not reachable" in down.json()["error"]["message"]
        degraded = http.get("/readyz")  # storage stays in service without inference
        assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded")
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
        assert all(a.status_code in (201, 502, 503) for a in answers), [
            a.text for a in answers if a.status_code >= 400
        ]
        listed = set()
        cursor = None
        while True:
            page = http.get(
                "/api/v1/images", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
            ).json()
            listed |= {item["id"] for item in page["items"]}
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert set(acknowledged) <= listed, "every acknowledged upload is still there"
        compose("start", "inference")
        wait_until("inference back", lambda: http.get("/readyz").json()["status"] == "ready", timeout_s=90)
        assert http.post(f"/api/v1/images/{big_id}/segmentation").status_code == 201


# ---------------------------------------------------------------------------------------------
# The Helm chart's workloads, each with its own pod spec, on podman

SUBNET = "10.89.77"
ADDRESSES = {"inference": f"{SUBNET}.11", "storage": f"{SUBNET}.12", "drift-monitor": f"{SUBNET}.13"}
RELEASE = "ci"


class Podman:
    def __init__(self, path: str, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self.played: list[Path] = []

    def __call__(
        self, *arguments: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.path, *arguments, timeout=timeout, check=check)

    def play(self, name: str, documents: list[dict[str, Any]], address: str | None = None) -> None:
        manifest = self.folder / f"{name}.yaml"
        manifest.write_text(yaml.safe_dump_all(documents))
        self.played.append(manifest)
        self(
            "kube",
            "play",
            "--network",
            "cropseg-kube",
            *(["--ip", address] if address else []),
            str(manifest),
        )

    def container(self, pod: str, container: str) -> dict[str, Any]:
        return dict(json.loads(self("inspect", f"{pod}-{container}").stdout)[0])


def pod_spec_with_service_names(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec, plus what cluster DNS gives a pod: the Services' names (podman has no Services)."""
    aliases = [{"ip": ip, "hostnames": [f"{RELEASE}-cropseg-{name}"]} for name, ip in ADDRESSES.items()]
    return {**spec, "hostAliases": [*(spec.get("hostAliases") or []), *aliases]}


def as_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": name, "labels": template["metadata"].get("labels", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec_with_service_names(template["spec"]),
    }


@pytest.fixture(scope="module")
def podman(docker: str, podman_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    engine = Podman(podman_binary, tmp_path_factory.mktemp("kube"))
    # podman has its own image store: load what docker built when it differs (the batch Job is off by default)
    for image in (image for service, image in IMAGES.items() if service != "batch"):
        ours = run(docker, "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
        theirs = engine("image", "inspect", "-f", "{{.Id}}", image, check=False).stdout.strip()
        if theirs.removeprefix("sha256:") != ours.removeprefix("sha256:"):
            saved = engine.folder / "image.tar"
            run(docker, "save", "-o", str(saved), image, timeout=600)
            engine("load", "-i", str(saved), timeout=600)
            saved.unlink()
    leftovers = engine(
        "pod", "ps", "-q", "--filter", f"label=app.kubernetes.io/instance={RELEASE}"
    ).stdout.split()
    if leftovers:  # of an interrupted earlier run
        engine("pod", "rm", "-f", *leftovers)
    engine("volume", "rm", "-f", f"{RELEASE}-cropseg-data", check=False)
    engine("network", "rm", "-f", "cropseg-kube", check=False)
    engine("network", "create", "--subnet", f"{SUBNET}.0/24", "cropseg-kube")
    try:
        yield engine
    finally:
        for manifest in reversed(engine.played):
            engine("kube", "down", str(manifest), check=False)
        engine("volume", "rm", "-f", f"{RELEASE}-cropseg-data", check=False)
        engine("network", "rm", "-f", "cropseg-kube", check=False)
        engine("secret", "rm", f"{RELEASE}-cropseg-api-token", check=False)


def probe(address: str, port: int, path: str) -> bool:
    """A kubelet's httpGet probe: any status from 200 to 399 passes."""
    return 200 <= httpx.get(f"http://{address}:{port}{path}", timeout=2).status_code < 400


def test_every_chart_workload_runs_with_its_own_pod_spec_on_podman(
    podman: Podman, http: Callable[[str], httpx.Client]
) -> None:
    helm = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    token = "ci-token-" + "x" * 24
    rendered = run(helm, "template", RELEASE, str(REPO / "charts/cropseg"), "--namespace", "cropseg",
                   "--set", f"apiToken.value={token}").stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in documents
        if d["kind"] == "Deployment"
    }
    assert set(deployments) == set(ADDRESSES)
    # Secret and PVC first (kube play creates a podman secret and a named volume), then each workload.
    for secret in (d for d in documents if d["kind"] == "Secret"):
        # podman 4.3's `kube play` of a Secret stores the YAML, but secretKeyRef reads a podman
        # secret as the JSON of the Secret's `data` ("is not valid JSON"): store that.
        stored = podman.folder / f"{secret['metadata']['name']}.json"
        stored.write_text(json.dumps(secret["data"]))
        podman("secret", "rm", secret["metadata"]["name"], check=False)
        podman("secret", "create", secret["metadata"]["name"], str(stored))
    podman.play("shared", [d for d in documents if d["kind"] in ("PersistentVolumeClaim", "ConfigMap")])
    for component in ("inference", "drift-monitor", "storage"):
        deployment = json.loads(json.dumps(deployments[component]))
        template = deployment["spec"]["template"]
        template["spec"] = pod_spec_with_service_names(template["spec"])
        podman.play(component, [deployment], ADDRESSES[component])

    for component, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        port = container["ports"][0]["containerPort"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in container:
                path = container[kind]["httpGet"]["path"]
                wait_until(
                    f"{component} {kind} {path}",
                    lambda address=ADDRESSES[component], port=port, path=path: probe(address, port, path),
                    timeout_s=120,
                )
        facts = podman.container(f"{deployment['metadata']['name']}-pod-0", container["name"])
        config, host = facts["Config"], facts["HostConfig"]
        context = {**spec["securityContext"], **container["securityContext"]}
        assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
        assert host["ReadonlyRootfs"] is context["readOnlyRootFilesystem"]
        assert "CAP_NET_RAW" not in (facts.get("EffectiveCaps") or []), "capabilities dropped"
        assert host["Memory"] == parse_quantity(container["resources"]["limits"]["memory"])
        assert config["Cmd"][-len(container["args"]) :] == container["args"]
        environment = {e.split("=", 1)[0]: e.split("=", 1)[1] for e in config["Env"]}
        for variable in container.get("env", []):
            if "value" in variable:
                assert environment[variable["name"]] == str(variable["value"])
    # Storage as a client reaches it: it calls inference by its Service name; writes need the Secret's token.
    storage = http(f"http://{ADDRESSES['storage']}:8002")
    body = tile_png(64, 0)
    assert (
        storage.post("/api/v1/images", content=body, headers={"content-type": "image/png"}).status_code == 401
    )
    auth = {"Authorization": f"Bearer {token}"}
    for index in range(3):
        created = storage.post(
            "/api/v1/images", content=tile_png(64, index), headers={**auth, "content-type": "image/png"}
        )
        assert created.status_code == 201, created.text
        assert (
            storage.post(f"/api/v1/images/{created.json()['id']}/segmentation", headers=auth).status_code
            == 201
        )
    # The CronJob's pod template runs to completion against the shared volume.
    cronjob = kinds[("CronJob", f"{RELEASE}-cropseg-drift")]
    podman.play(
        "drift-job",
        [as_pod(f"{RELEASE}-cropseg-drift-manual", cronjob["spec"]["jobTemplate"]["spec"]["template"])],
    )
    job_container = f"{RELEASE}-cropseg-drift-manual-drift-job"
    assert podman("wait", job_container, timeout=600).stdout.strip() == "0", podman(
        "logs", job_container
    ).stderr[-3000:]
    reports = httpx.get(f"http://{ADDRESSES['drift-monitor']}:8003/api/v1/drift/reports", timeout=30).json()
    assert reports["items"], "the job's report is served by the drift monitor"
    # `helm test`: the test pod's own command passes.
    (test_pod,) = [d for d in documents if d["kind"] == "Pod"]
    podman.play("helm-test", [as_pod(test_pod["metadata"]["name"], test_pod)])
    test_container = f"{test_pod['metadata']['name']}-{test_pod['spec']['containers'][0]['name']}"
    assert podman("wait", test_container, timeout=120).stdout.strip() == "0", podman(
        "logs", test_container
    ).stdout


def parse_quantity(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)
