"""The Job an on-demand run creates in a cluster, built from the CronJob, and the calls the
official client makes to create and read it, against a loopback HTTPS server (its certificate
from a test CA, as a cluster's is) answering as the API server does."""

from __future__ import annotations

import copy
import json
import re
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from cropseg_drift import kube
from cropseg_drift.kube import (
    REPORT_ID_ENV,
    RUN_ID_LABEL,
    KubernetesError,
    KubernetesJobs,
    in_cluster_configuration,
    job_from_cronjob,
    job_name,
    job_state,
)
from kubernetes import client

CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "cropseg-drift", "namespace": "fields", "uid": "5f0c-uid"},
    "spec": {
        "schedule": "0 * * * *",
        "concurrencyPolicy": "Forbid",
        "jobTemplate": {
            "metadata": {
                "labels": {"app.kubernetes.io/name": "cropseg", "app.kubernetes.io/component": "drift-job"}
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 3600,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "drift-job"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "drift",
                                "image": "cropseg/drift-monitor:0.1.0",
                                "args": ["run"],
                                "env": [
                                    {"name": "DRIFT_ENGINE", "value": "alibi"},
                                    {"name": REPORT_ID_ENV, "value": "old"},
                                ],
                            }
                        ],
                    },
                },
            },
        },
    },
}
RUN_ID = "20261127T144100123456Z"


def test_job_is_the_cronjob_template_owned_by_it_and_labelled() -> None:
    original = copy.deepcopy(CRONJOB)
    job = job_from_cronjob(CRONJOB, RUN_ID)
    assert original == CRONJOB  # the CronJob object is not modified
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    metadata = job["metadata"]
    assert metadata["namespace"] == "fields"
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "cropseg",
        "app.kubernetes.io/component": "drift-job",
        RUN_ID_LABEL: RUN_ID,
        "cropseg.io/trigger": "api",
    }
    assert metadata["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual"}
    assert metadata["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "cropseg-drift", "uid": "5f0c-uid",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 3600)
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == ["run"]
    assert container["env"] == [
        {"name": "DRIFT_ENGINE", "value": "alibi"},
        {"name": REPORT_ID_ENV, "value": RUN_ID},
    ]
    assert spec["template"]["metadata"]["labels"][RUN_ID_LABEL] == RUN_ID


@pytest.mark.parametrize(
    "name", ["cropseg-drift", "a" * 80, "release-with-a-rather-long-name-cropseg-drift-"]
)
def test_job_names_are_valid_dns_labels(name: str) -> None:
    result = job_name(name, RUN_ID)
    assert len(result) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", result)
    assert result.endswith("-" + "20261127144100123456"[-14:])


@pytest.mark.parametrize(
    ("status", "state"),
    [({"active": 1}, "running"), ({"succeeded": 1}, "succeeded"), ({"failed": 1}, "failed"), ({}, "running"),
     ({"failed": 1, "active": 1}, "running")],
)  # fmt: skip
def test_job_state(status: dict[str, int], state: str) -> None:
    assert job_state(client.V1JobStatus(**status)) == state
    assert job_state(None) == "running"


def test_namespace_and_cluster_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert kube.current_namespace("explicit") == "explicit"
    monkeypatch.setattr(kube, "NAMESPACE_FILE", tmp_path / "namespace")
    assert kube.current_namespace(None) == "default"
    (tmp_path / "namespace").write_text("fields\n")
    assert kube.current_namespace(None) == "fields"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not kube.in_cluster()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert kube.in_cluster()


class FakeApiServer(ThreadingHTTPServer):
    """Answers the three batch/v1 calls the monitor makes over TLS; records each request."""

    def __init__(self, certificate: trustme.LeafCert) -> None:
        super().__init__(("127.0.0.1", 0), ApiHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(context)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[tuple[str, str, str | None, dict[str, Any] | None]] = []
        self.jobs: list[dict[str, Any]] = []


class ApiHandler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, self.headers.get("Authorization"), None))
        if self.path == "/apis/batch/v1/namespaces/fields/cronjobs/cropseg-drift":
            self._answer(200, CRONJOB)
        elif self.path.startswith("/apis/batch/v1/namespaces/fields/jobs?labelSelector="):
            selector = self.path.split("=", 1)[1].replace("%2F", "/").replace("%3D", "=")
            key, value = selector.split("=")
            items = [j for j in self.server.jobs if j["metadata"]["labels"].get(key) == value]
            self._answer(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items})
        else:
            self._answer(404, {"kind": "Status", "reason": "NotFound"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, self.headers.get("Authorization"), body))
        if body["metadata"]["name"] in {j["metadata"]["name"] for j in self.server.jobs}:
            message = f'jobs.batch "{body["metadata"]["name"]}" already exists'
            self._answer(409, {"kind": "Status", "reason": "AlreadyExists", "message": message, "code": 409})
            return
        self.server.jobs.append({**body, "status": {"active": 1}})
        self._answer(201, body)


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def api_server(authority: trustme.CA) -> Iterator[FakeApiServer]:
    server = FakeApiServer(authority.issue_cert("127.0.0.1"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def service_account(
    tmp_path: Path, authority: trustme.CA, api_server: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A pod's view: the API server in the environment, token, CA and namespace in files."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api_server.server_port))
    (tmp_path / "token").write_text("token-1")  # projected tokens end without a newline
    authority.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "namespace").write_text("fields")
    monkeypatch.setattr(kube, "NAMESPACE_FILE", tmp_path / "namespace")
    return tmp_path


@pytest.mark.slow
def test_jobs_are_created_and_read_with_the_pods_service_account(
    api_server: FakeApiServer, service_account: Path
) -> None:
    jobs = KubernetesJobs("cropseg-drift", None, configuration=in_cluster_configuration(service_account))
    assert jobs.api.api_client.configuration.host == f"https://127.0.0.1:{api_server.server_port}"  # TLS
    assert not jobs.active()
    assert jobs.state(RUN_ID) is None
    name = jobs.create(RUN_ID)
    assert name == job_name("cropseg-drift", RUN_ID)
    assert jobs.active()
    assert jobs.state(RUN_ID) == "running"
    api_server.jobs[0]["status"] = {"succeeded": 1}
    assert not jobs.active()
    assert jobs.state(RUN_ID) == "succeeded"
    calls = [
        (method, path.split("?")[0], authorization) for method, path, authorization, _ in api_server.requests
    ]
    jobs_path = "/apis/batch/v1/namespaces/fields/jobs"
    assert calls[:4] == [
        ("GET", jobs_path, "bearer token-1"),
        ("GET", jobs_path, "bearer token-1"),
        ("GET", "/apis/batch/v1/namespaces/fields/cronjobs/cropseg-drift", "bearer token-1"),
        ("POST", jobs_path, "bearer token-1"),
    ]
    posted = api_server.requests[3][3]
    assert posted == job_from_cronjob(CRONJOB, RUN_ID)
    with pytest.raises(KubernetesError, match=r"409.*already exists") as refused:
        jobs.create(RUN_ID)
    assert refused.value.status_code == 502


def test_a_server_with_a_certificate_from_another_authority_is_refused(
    api_server: FakeApiServer, service_account: Path
) -> None:
    trustme.CA().cert_pem.write_to_path(str(service_account / "ca.crt"))
    jobs = KubernetesJobs("cropseg-drift", None, configuration=in_cluster_configuration(service_account))
    with pytest.raises(KubernetesError, match=r"unreachable.*CERTIFICATE_VERIFY_FAILED"):
        jobs.active()
    assert api_server.requests == []


@pytest.mark.slow
def test_an_unreachable_api_server_is_a_clear_502(
    service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "9")
    jobs = KubernetesJobs(
        "cropseg-drift", None, configuration=in_cluster_configuration(service_account), timeout_s=2
    )
    with pytest.raises(KubernetesError, match=r"unreachable at https://127\.0\.0\.1:9"):
        jobs.active()


def test_a_pod_without_credentials_gets_a_clear_502_on_a_run_not_a_failed_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)  # no token, no CA
    jobs = KubernetesJobs("cropseg-drift", "fields")
    with pytest.raises(KubernetesError, match="ServiceAccount token mounted"):
        jobs.active()
