"""Jobs on demand inside a cluster: a Job created from a CronJob of the chart, as
``kubectl create job --from=cronjob/<name>`` does (drift runs, field segmentations).

The object builder is a pure function (tested without a cluster). Reading the CronJob and
creating and listing Jobs go through the official ``kubernetes`` client (``BatchV1Api``) with
the pod's in-cluster configuration: the ServiceAccount token, which the client re-reads as the
projected token rotates, and the cluster CA; the chart's Roles allow exactly those calls.
Version 35 is pinned (the ``kube`` extra): the newest without the generated asyncio copy
(``kubernetes/aio``, 68 MB from 36 on) that no service imports. It is imported on the first
call to the API server, so a service outside a cluster never loads it (0.3 s). Tested against a
loopback HTTPS server answering as the API server does; not yet run against a live API server
(none can be had here).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cropseg_core.errors import BadGatewayError

if TYPE_CHECKING:
    from kubernetes import client

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NAMESPACE_FILE = SERVICE_ACCOUNT / "namespace"
TRIGGER_LABEL = "cropseg.io/trigger"
"""On every Job created here (``api``), so that they are told from the CronJob's scheduled ones."""

JobState = Literal["running", "succeeded", "failed"]


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def current_namespace(configured: str | None) -> str:
    if configured:
        return configured
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "default"


def job_name(cronjob_name: str, suffix: str) -> str:
    """DNS-1123, at most 63 characters: <cronjob>-<suffix>, the CronJob's name shortened to fit
    (``suffix``: lowercase letters, digits and dashes, at most 40 characters)."""
    return f"{cronjob_name[: 63 - len(suffix) - 1].rstrip('-')}-{suffix}"


def job_from_cronjob(
    cronjob: dict[str, Any], suffix: str, env: Mapping[str, str], labels: Mapping[str, str]
) -> dict[str, Any]:
    """A Job manifest from a CronJob (as the API returns it): same template, owned by the
    CronJob so it is cleaned up with it, named ``<cronjob>-<suffix>``, its pods given ``env``
    (replacing variables of the same names) and the Job and its pods ``labels``."""
    metadata = cronjob["metadata"]
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    template_metadata = template.get("metadata") or {}
    spec = template["spec"]
    for container in spec["template"]["spec"]["containers"]:
        kept = [e for e in container.get("env") or [] if e.get("name") not in env]
        container["env"] = [*kept, *({"name": name, "value": value} for name, value in env.items())]
    pod_metadata = spec["template"].setdefault("metadata", {})
    pod_metadata["labels"] = {**(pod_metadata.get("labels") or {}), **labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(metadata["name"], suffix),
            "namespace": metadata["namespace"],
            "labels": {**(template_metadata.get("labels") or {}), **labels, TRIGGER_LABEL: "api"},
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


def job_state(status: client.V1JobStatus | None) -> JobState:
    """running, succeeded or failed, from a Job's status."""
    if status is None:
        return "running"
    if status.succeeded:
        return "succeeded"
    if status.failed and not status.active:
        return "failed"
    return "running"


class KubernetesError(BadGatewayError):
    """The API server refused or could not be reached (502: the service's upstream failed)."""

    code = "kubernetes_api_error"


def in_cluster_configuration(service_account: Path | None = None) -> client.Configuration:
    """The pod's own credentials: API server from the environment, token and CA from the
    ServiceAccount folder (the token re-read once a minute, as projected tokens rotate)."""
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    service_account = service_account or SERVICE_ACCOUNT
    configuration = client.Configuration()
    loader = InClusterConfigLoader(
        token_filename=str(service_account / "token"), cert_filename=str(service_account / "ca.crt")
    )
    loader.load_and_set(configuration)
    return configuration


class KubernetesJobs:
    """Create Jobs from one CronJob and read them back, through the API server."""

    def __init__(
        self,
        cronjob_name: str,
        namespace: str | None,
        configuration: client.Configuration | None = None,
        timeout_s: float = 10.0,
        *,
        service: str,
    ) -> None:
        self.configuration = configuration
        self._api: client.BatchV1Api | None = None
        self.timeout_s = timeout_s
        self.cronjob_name = cronjob_name
        self.namespace = current_namespace(namespace)
        self.service = service
        """Who creates the Jobs (``the drift monitor``), for the error messages."""

    @property
    def api(self) -> client.BatchV1Api:
        """The client, configured on first use: a pod without credentials still serves the rest."""
        if self._api is None:
            from kubernetes import client
            from kubernetes.config.config_exception import ConfigException

            try:
                configuration = self.configuration or in_cluster_configuration()
            except ConfigException as error:
                raise KubernetesError(
                    f"no in-cluster credentials ({error}): {self.service}'s pod needs its "
                    "ServiceAccount token mounted to start Jobs"
                ) from error
            configuration.retries = 2  # a dropped connection is retried; an answer from the server is not
            self._api = client.BatchV1Api(client.ApiClient(configuration))
        return self._api

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, _request_timeout=self.timeout_s, **kwargs)
        except ApiException as error:
            detail = (error.body or error.reason or "")[:300]
            raise KubernetesError(f"{what}: API server answered {error.status}: {detail}") from error
        except HTTPError as error:
            server = self.api.api_client.configuration.host
            raise KubernetesError(f"{what}: API server unreachable at {server}: {error}") from error

    def jobs(self, labels: Mapping[str, str]) -> list[client.V1Job]:
        """Jobs with all of ``labels``."""
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        jobs = self._call("list jobs", self.api.list_namespaced_job, self.namespace, label_selector=selector)
        return list(jobs.items)

    def create(self, suffix: str, env: Mapping[str, str], labels: Mapping[str, str]) -> str:
        """Create ``<cronjob>-<suffix>`` (:func:`job_from_cronjob`); its name."""
        cronjob = self._call(
            f"read cronjob {self.cronjob_name}",
            self.api.read_namespaced_cron_job,
            self.cronjob_name,
            self.namespace,
        )
        job = job_from_cronjob(self.api.api_client.sanitize_for_serialization(cronjob), suffix, env, labels)
        self._call("create job", self.api.create_namespaced_job, self.namespace, job)
        return str(job["metadata"]["name"])

    def active(self, labels: Mapping[str, str]) -> bool:
        """Whether a Job created here with ``labels`` is still running."""
        return any(job_state(job.status) == "running" for job in self.jobs({**labels, TRIGGER_LABEL: "api"}))

    def state(self, labels: Mapping[str, str]) -> JobState | None:
        """The state of the newest Job with ``labels``; None when there is none."""
        jobs = self.jobs(labels)
        if not jobs:
            return None
        newest = max(
            jobs,
            key=lambda job: (job.metadata.creation_timestamp is not None, job.metadata.creation_timestamp),
        )
        return job_state(newest.status)
