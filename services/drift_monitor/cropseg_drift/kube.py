"""On-demand runs inside a cluster: a Job created from the drift CronJob, as
``kubectl create job --from=cronjob/<name>`` does.

The object builder is a pure function (tested without a cluster). Creating and reading Jobs
are three REST calls with the pod's ServiceAccount token (re-read on every call: projected
tokens rotate) and the cluster CA; the chart's Role allows exactly those. The ``kubernetes``
client package would add 126 MB to the image for them. Tested against a loopback server that
answers as the API server does; not yet run against a live API server (none can be had here).
"""

from __future__ import annotations

import copy
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cropseg_core.web.errors import BadGatewayError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NAMESPACE_FILE = SERVICE_ACCOUNT / "namespace"
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


class KubernetesError(BadGatewayError):
    """The API server refused or could not be reached (502: the monitor's upstream failed)."""

    code = "kubernetes_api_error"


class KubernetesJobs:
    """Create and read drift Jobs through the API server (in-cluster credentials)."""

    def __init__(
        self,
        cronjob_name: str,
        namespace: str | None,
        server: str | None = None,
        service_account: Path = SERVICE_ACCOUNT,
        timeout_s: float = 10.0,
    ) -> None:
        if server is None:
            host, port = (
                os.environ["KUBERNETES_SERVICE_HOST"],
                os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
            )
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self.server = server.rstrip("/")
        self.token_file = service_account / "token"
        ca = service_account / "ca.crt"
        self.context = ssl.create_default_context(cafile=str(ca)) if ca.exists() else None
        self.timeout_s = timeout_s
        self.cronjob_name = cronjob_name
        self.namespace = current_namespace(namespace)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.server}/apis/batch/v1/namespaces/{urllib.parse.quote(self.namespace)}/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        if self.token_file.exists():
            request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.context) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise KubernetesError(f"{method} {path}: API server answered {error.code}: {detail}") from error
        except OSError as error:
            raise KubernetesError(
                f"{method} {path}: API server unreachable at {self.server}: {error}"
            ) from error

    def _jobs(self, selector: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"jobs?{urllib.parse.urlencode({'labelSelector': selector})}")["items"])

    def create(self, run_id: str) -> str:
        cronjob = self._call("GET", f"cronjobs/{urllib.parse.quote(self.cronjob_name)}")
        job = job_from_cronjob(cronjob, run_id)
        self._call("POST", "jobs", job)
        return str(job["metadata"]["name"])

    def active(self) -> bool:
        return any(job_state(job) == "running" for job in self._jobs(f"{TRIGGER_LABEL}=api"))

    def state(self, run_id: str) -> str | None:
        jobs = self._jobs(f"{RUN_ID_LABEL}={run_id}")
        return job_state(jobs[0]) if jobs else None
