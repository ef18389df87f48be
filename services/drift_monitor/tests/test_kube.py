"""The Job an on-demand run creates in a cluster, built from the CronJob (no cluster needed)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from cropseg_drift import kube
from cropseg_drift.kube import REPORT_ID_ENV, RUN_ID_LABEL, job_from_cronjob, job_name, job_state

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
    assert job_state({"status": status}) == state


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
