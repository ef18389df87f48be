"""Field segmentations in a cluster: a Job per segmentation from the chart's field-worker
CronJob, created through the loopback API server (``kubernetes_api``) with the pod's
ServiceAccount, as drift runs are."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cropseg_storage.field_jobs import LaunchError, LocalLauncher
from cropseg_storage.kube_jobs import FIELD_ID_ENV, FIELD_LABEL, KubernetesLauncher, field_job, field_launcher
from cropseg_storage.main import create_app
from fastapi.testclient import TestClient
from storage_testing import make_settings

from cropseg_core.fields import FieldCatalogue, FieldRecord
from cropseg_core.kube import KubernetesJobs
from cropseg_core.store.filesystem import FilesystemStore

FIELD_ID = "0123456789abcdef0123456789abcdef"
CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "cropseg-field-worker", "namespace": "fields", "uid": "9a1e-uid"},
    "spec": {
        "schedule": "0 0 31 2 *",
        "suspend": True,
        "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/component": "field-worker"}},
            "spec": {
                "backoffLimit": 1,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "field-worker"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "field-worker",
                                "image": "cropseg/batch:0.1.0",
                                "args": ["field-worker", "--store", "/data", "--field", "$(FIELD_ID)"],
                                "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://s3:8333"}],
                            }
                        ],
                    },
                },
            },
        },
    },
}


def test_a_fields_job_is_the_cronjob_template_told_its_field_and_labelled_with_it() -> None:
    original = copy.deepcopy(CRONJOB)
    job = field_job(CRONJOB, FIELD_ID, datetime(2026, 11, 27, 14, 41, 0, tzinfo=UTC))
    assert original == CRONJOB
    metadata = job["metadata"]
    assert metadata["name"] == "cropseg-field-worker-0123456789ab-20261127144100"
    assert len(metadata["name"]) <= 63
    assert metadata["labels"] == {
        "app.kubernetes.io/component": "field-worker",
        FIELD_LABEL: FIELD_ID,
        "cropseg.io/trigger": "api",
    }
    assert metadata["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "cropseg-field-worker", "uid": "9a1e-uid",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][FIELD_LABEL] == FIELD_ID
    (container,) = pod["spec"]["containers"]
    assert container["env"] == [
        {"name": "AWS_ENDPOINT_URL", "value": "http://s3:8333"},
        {"name": FIELD_ID_ENV, "value": FIELD_ID},  # what --field $(FIELD_ID) expands to
    ]
    assert (job["spec"]["backoffLimit"], job["spec"]["ttlSecondsAfterFinished"]) == (1, 86400)


def test_outside_a_cluster_the_local_worker_polls_and_nothing_is_launched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    launcher = field_launcher(make_settings(tmp_path))
    assert isinstance(launcher, LocalLauncher)
    assert (launcher.backend, launcher.launch(FIELD_ID)) == ("local", None)


@pytest.mark.slow
def test_in_a_cluster_each_segmentation_is_a_job_created_with_the_pods_service_account(
    kubernetes_api: Any, service_account: Path, tmp_path: Path
) -> None:
    kubernetes_api.cronjobs["cropseg-field-worker"] = CRONJOB
    launcher = field_launcher(make_settings(tmp_path))  # KUBERNETES_SERVICE_HOST is set
    assert isinstance(launcher, KubernetesLauncher)
    assert launcher.jobs.namespace == "fields"  # the pod's
    before = datetime.now(UTC).replace(microsecond=0)
    name = launcher.launch(FIELD_ID)
    assert launcher.backend == "kubernetes"
    (method, path, authorization, posted) = kubernetes_api.requests[-1]
    assert (method, path, authorization) == (
        "POST",
        "/apis/batch/v1/namespaces/fields/jobs",
        "bearer token-1",
    )
    assert posted is not None
    assert name == posted["metadata"]["name"]
    created = datetime.strptime(name.rsplit("-", 1)[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= created <= datetime.now(UTC)
    assert posted == field_job(CRONJOB, FIELD_ID, created)
    assert launcher.jobs.state({FIELD_LABEL: FIELD_ID}) == "running"


def test_a_job_the_api_server_refuses_is_a_launch_error_saying_what_to_check(
    kubernetes_api: Any, service_account: Path
) -> None:
    jobs = KubernetesJobs("cropseg-field-worker", None, service="storage")  # the pod's credentials
    with pytest.raises(LaunchError, match=r"404.*CronJob cropseg-field-worker and storage's Role") as refused:
        KubernetesLauncher(jobs).launch(FIELD_ID)  # the chart's CronJob is missing
    assert refused.value.status_code == 503
    assert not kubernetes_api.jobs


@pytest.mark.slow
def test_asking_a_segmentation_in_a_cluster_creates_its_job_and_records_it(
    kubernetes_api: Any, service_account: Path, tmp_path: Path
) -> None:
    kubernetes_api.cronjobs["cropseg-field-worker"] = CRONJOB
    data = tmp_path / "data"
    source = tmp_path / "field.tif"
    source.write_bytes(b"II*\x00 a GeoTIFF as far as the catalogue cares")
    record = FieldRecord(
        id=FIELD_ID, name="north", filename="north.tif", size=source.stat().st_size, width=96, height=64,
        bands=3, alpha=False, layout="rgb", crs="EPSG:32633", pixel_size=(0.02, 0.02),
        bounds=(500000.0, 5000000.0, 500001.92, 5000001.28), created=datetime.now(UTC),
    )  # fmt: skip
    FieldCatalogue(FilesystemStore(data)).add(record, source)
    with TestClient(create_app(make_settings(data))) as client:
        answer = client.post(f"/api/v1/fields/{FIELD_ID}/segment", json={"cell_m": 5})
        assert answer.status_code == 202, answer.text
        (job,) = kubernetes_api.jobs
        name = job["metadata"]["name"]
        assert name.startswith("cropseg-field-worker-0123456789ab-")
        assert {"name": FIELD_ID_ENV, "value": FIELD_ID} in job["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
        queued = FieldCatalogue(FilesystemStore(data)).job(FIELD_ID)
        assert queued is not None
        assert (queued.status, queued.backend, queued.job, queued.cover.cell_m) == (
            "queued",
            "kubernetes",
            name,
            5,
        )
        assert client.get(f"/api/v1/fields/{FIELD_ID}").json()["job"]["job"] == name

        kubernetes_api.cronjobs.clear()  # the chart's CronJob deleted: the next ask cannot start a worker
        assert client.post(f"/api/v1/fields/{FIELD_ID}/cancel").status_code == 202
        refused = client.post(f"/api/v1/fields/{FIELD_ID}/segment", json={})
        assert refused.status_code == 503, refused.text
        assert "CronJob cropseg-field-worker" in refused.json()["error"]["message"]
        failed = FieldCatalogue(FilesystemStore(data)).job(FIELD_ID)
        assert failed is not None
        assert failed.status == "failed"
        assert "404" in (failed.error or "")
