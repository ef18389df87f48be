"""On-demand runs inside a cluster: a Job created from the drift CronJob, as
``kubectl create job --from=cronjob/<name>`` does.

The object builder is a pure function (tested without a cluster). Creating and reading Jobs
goes through the official ``kubernetes`` client with the pod's ServiceAccount; the chart's
Role allows exactly that. This path has not been run against a live API server here (no
cluster on the build machine): the builder's output is what is tested.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RUN_ID_LABEL = "cropseg.io/drift-run"
TRIGGER_LABEL = "cropseg.io/trigger"
REPORT_ID_ENV = "DRIFT_REPORT_ID"


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def current_namespace(configured: str | None) -> str:
    if configured:
        return configured
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "default"


def job_name(cronjob_name: str, run_id: str) -> str:
    """DNS-1123, at most 63 characters: <cronjob>-<run id digits>."""
    suffix = re.sub(r"[^0-9]", "", run_id)[-14:]
    return f"{cronjob_name[: 63 - len(suffix) - 1].rstrip('-')}-{suffix}"


def job_from_cronjob(cronjob: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A Job manifest from a CronJob (as the API returns it): same template, owned by the
    CronJob so it is cleaned up with it, labelled with the run id, and told to write its
    report under that id."""
    metadata = cronjob["metadata"]
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    template_metadata = template.get("metadata") or {}
    spec = template["spec"]
    for container in spec["template"]["spec"]["containers"]:
        env = [e for e in container.get("env") or [] if e.get("name") != REPORT_ID_ENV]
        container["env"] = [*env, {"name": REPORT_ID_ENV, "value": run_id}]
    pod_metadata = spec["template"].setdefault("metadata", {})
    pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), RUN_ID_LABEL: run_id}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(metadata["name"], run_id),
            "namespace": metadata["namespace"],
            "labels": {**(template_metadata.get("labels") or {}), RUN_ID_LABEL: run_id, TRIGGER_LABEL: "api"},
            "annotations": {
                **(template_metadata.get("annotations") or {}),
                "cronjob.kubernetes.io/instantiate": "manual",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def job_state(job: dict[str, Any]) -> str:
    """running, succeeded or failed, from a Job's status."""
    status = job.get("status") or {}
    if status.get("succeeded"):
        return "succeeded"
    if status.get("failed") and not status.get("active"):
        return "failed"
    return "running"


class KubernetesJobs:
    """Create and read drift Jobs through the API server (in-cluster credentials)."""

    def __init__(self, cronjob_name: str, namespace: str | None) -> None:
        from kubernetes import client, config

        config.load_incluster_config()
        self.api = client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.cronjob_name = cronjob_name
        self.namespace = current_namespace(namespace)

    def create(self, run_id: str) -> str:
        cronjob = self.api.sanitize_for_serialization(
            self.batch.read_namespaced_cron_job(self.cronjob_name, self.namespace)
        )
        job = job_from_cronjob(cronjob, run_id)
        self.batch.create_namespaced_job(self.namespace, job)  # type: ignore[arg-type]  # the client takes dicts
        return str(job["metadata"]["name"])

    def active(self) -> bool:
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=f"{TRIGGER_LABEL}=api")
        return any(job_state(self.api.sanitize_for_serialization(job)) == "running" for job in jobs.items)

    def state(self, run_id: str) -> str | None:
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=f"{RUN_ID_LABEL}={run_id}")
        return job_state(self.api.sanitize_for_serialization(jobs.items[0])) if jobs.items else None
