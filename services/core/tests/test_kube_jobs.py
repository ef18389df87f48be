"""Jobs on demand from a CronJob (cropseg_core.kube): the Job built from it, and the calls the
official client makes to create and read Jobs, against a loopback HTTPS server (its certificate
from a test CA, as a cluster's is) answering as the API server does (``kubernetes_api``)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import trustme
from kubernetes import client

from cropseg_core import kube
from cropseg_core.kube import (
    TRIGGER_LABEL,
    KubernetesError,
    KubernetesJobs,
    in_cluster_configuration,
    job_from_cronjob,
    job_name,
    job_state,
)

CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "cropseg-worker", "namespace": "fields", "uid": "5f0c-uid"},
    "spec": {
        "schedule": "0 0 31 2 *",
        "suspend": True,
        "jobTemplate": {
            "metadata": {
                "labels": {"app.kubernetes.io/component": "worker"},
                "annotations": {"note": "kept"},
            },
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "worker"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {"name": "worker", "image": "cropseg/batch:0.1.0", "args": ["work"],
                             "env": [{"name": "KEPT", "value": "1"}, {"name": "ITEM", "value": "old"}]},
                            {"name": "sidecar", "image": "cropseg/batch:0.1.0"},
                        ],
                    },
                },
            },
        },
    },
}  # fmt: skip


def test_the_job_is_the_cronjob_template_owned_by_it_with_the_env_and_labels_asked() -> None:
    original = copy.deepcopy(CRONJOB)
    job = job_from_cronjob(CRONJOB, "abc-1", {"ITEM": "42", "MORE": "x"}, {"cropseg.io/item": "42"})
    assert original == CRONJOB  # the CronJob object is not modified
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    metadata = job["metadata"]
    assert (metadata["name"], metadata["namespace"]) == ("cropseg-worker-abc-1", "fields")
    assert metadata["labels"] == {
        "app.kubernetes.io/component": "worker",
        "cropseg.io/item": "42",
        TRIGGER_LABEL: "api",
    }
    assert metadata["annotations"] == {"note": "kept", "cronjob.kubernetes.io/instantiate": "manual"}
    assert metadata["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "cropseg-worker", "uid": "5f0c-uid",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    pod = job["spec"]["template"]
    assert job["spec"]["backoffLimit"] == 1
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/component": "worker", "cropseg.io/item": "42"}
    worker, sidecar = pod["spec"]["containers"]
    assert worker["env"] == [
        {"name": "KEPT", "value": "1"},
        {"name": "ITEM", "value": "42"},  # replaced, not doubled
        {"name": "MORE", "value": "x"},
    ]
    assert sidecar["env"] == [{"name": "ITEM", "value": "42"}, {"name": "MORE", "value": "x"}]


@pytest.mark.parametrize(
    "name", ["cropseg-drift", "a" * 80, "release-with-a-rather-long-name-cropseg-drift-"]
)
@pytest.mark.parametrize("suffix", ["20261127144100", "0123456789ab-20261127144100"])
def test_job_names_are_valid_dns_labels(name: str, suffix: str) -> None:
    result = job_name(name, suffix)
    assert len(result) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", result)
    assert result.endswith("-" + suffix)


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


@pytest.mark.slow
def test_jobs_are_created_and_read_with_the_pods_service_account(
    kubernetes_api: Any, service_account: Path
) -> None:
    kubernetes_api.cronjobs["cropseg-worker"] = CRONJOB
    configuration = in_cluster_configuration(service_account)
    jobs = KubernetesJobs("cropseg-worker", None, configuration=configuration, service="the test")
    assert jobs.api.api_client.configuration.host == f"https://127.0.0.1:{kubernetes_api.server_port}"  # TLS
    item = {"cropseg.io/item": "42"}
    assert not jobs.active(item)
    assert jobs.state(item) is None
    name = jobs.create("42-1", {"ITEM": "42"}, item)
    assert name == "cropseg-worker-42-1"
    assert jobs.active(item)
    assert not jobs.active({"cropseg.io/item": "43"})
    assert jobs.state(item) == "running"
    kubernetes_api.jobs[0]["status"] = {"failed": 1}
    assert not jobs.active(item)
    assert jobs.state(item) == "failed"
    calls = [(method, path.split("?")[0], auth) for method, path, auth, _ in kubernetes_api.requests]
    jobs_path = "/apis/batch/v1/namespaces/fields/jobs"
    assert calls[:4] == [
        ("GET", jobs_path, "bearer token-1"),
        ("GET", jobs_path, "bearer token-1"),
        ("GET", "/apis/batch/v1/namespaces/fields/cronjobs/cropseg-worker", "bearer token-1"),
        ("POST", jobs_path, "bearer token-1"),
    ]
    assert kubernetes_api.requests[0][1].endswith(
        "labelSelector=cropseg.io%2Fitem%3D42%2Ccropseg.io%2Ftrigger%3Dapi"
    )
    assert kubernetes_api.requests[3][3] == job_from_cronjob(CRONJOB, "42-1", {"ITEM": "42"}, item)
    with pytest.raises(KubernetesError, match=r"409.*already exists") as refused:
        jobs.create("42-1", {"ITEM": "42"}, item)
    assert refused.value.status_code == 502
    with pytest.raises(KubernetesError, match=r"read cronjob cropseg-other: API server answered 404"):
        KubernetesJobs("cropseg-other", None, configuration=configuration, service="the test").create(
            "1", {}, {}
        )


def test_a_server_with_a_certificate_from_another_authority_is_refused(
    kubernetes_api: Any, service_account: Path
) -> None:
    trustme.CA().cert_pem.write_to_path(str(service_account / "ca.crt"))
    configuration = in_cluster_configuration(service_account)
    jobs = KubernetesJobs("cropseg-worker", None, configuration=configuration, service="the test")
    with pytest.raises(KubernetesError, match=r"unreachable.*CERTIFICATE_VERIFY_FAILED"):
        jobs.active({})
    assert kubernetes_api.requests == []


@pytest.mark.slow
def test_an_unreachable_api_server_is_a_clear_502(
    service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "9")
    configuration = in_cluster_configuration(service_account)
    jobs = KubernetesJobs(
        "cropseg-worker", None, configuration=configuration, timeout_s=2, service="the test"
    )
    with pytest.raises(KubernetesError, match=r"unreachable at https://127\.0\.0\.1:9"):
        jobs.active({})


def test_a_pod_without_credentials_gets_a_clear_502_on_a_call_not_a_failed_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)  # no token, no CA
    jobs = KubernetesJobs("cropseg-worker", "fields", service="the field worker's launcher")
    with pytest.raises(
        KubernetesError, match="the field worker's launcher's pod needs its ServiceAccount token"
    ):
        jobs.active({})
