"""The Job an on-demand drift run creates in a cluster: built from the drift CronJob by
``cropseg_core.kube`` (tested there), labelled with the run id and told to write its report
under it; created and read back through the loopback API server (``kubernetes_api``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from cropseg_drift.kube import REPORT_ID_ENV, RUN_ID_LABEL, RunJobs, run_job

from cropseg_core.kube import KubernetesJobs, in_cluster_configuration

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


def test_a_runs_job_is_the_cronjob_template_labelled_with_the_run_and_writing_its_report() -> None:
    original = copy.deepcopy(CRONJOB)
    job = run_job(CRONJOB, RUN_ID)
    assert original == CRONJOB
    metadata = job["metadata"]
    assert metadata["name"] == "cropseg-drift-27144100123456"  # the run id's last 14 digits
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "cropseg",
        "app.kubernetes.io/component": "drift-job",
        RUN_ID_LABEL: RUN_ID,
        "cropseg.io/trigger": "api",
    }
    assert metadata["ownerReferences"][0]["name"] == "cropseg-drift"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 3600)
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == ["run"]
    assert container["env"] == [
        {"name": "DRIFT_ENGINE", "value": "alibi"},
        {"name": REPORT_ID_ENV, "value": RUN_ID},
    ]
    assert spec["template"]["metadata"]["labels"][RUN_ID_LABEL] == RUN_ID


@pytest.mark.slow
def test_runs_are_started_and_read_back_by_run_id(kubernetes_api: Any, service_account: Path) -> None:
    kubernetes_api.cronjobs["cropseg-drift"] = CRONJOB
    configuration = in_cluster_configuration(service_account)
    runs = RunJobs(
        KubernetesJobs("cropseg-drift", None, configuration=configuration, service="the drift monitor")
    )
    assert not runs.active()
    assert runs.state(RUN_ID) is None
    assert runs.create(RUN_ID) == "cropseg-drift-27144100123456"
    assert runs.active()
    assert runs.state(RUN_ID) == "running"
    assert runs.state("20261127T150000000000Z") is None
    kubernetes_api.jobs[0]["status"] = {"succeeded": 1}
    assert not runs.active()
    assert runs.state(RUN_ID) == "succeeded"
    posted = [body for method, _, _, body in kubernetes_api.requests if method == "POST"]
    assert posted == [run_job(CRONJOB, RUN_ID)]
