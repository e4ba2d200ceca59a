"""Pure builders: a FineTuneJob in, the ConfigMap and RayJob the operator creates out.

No I/O and no clock: the same job and settings always give the same objects, which is
what makes create-or-adopt idempotent and `finetune render` truthful.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import yaml

from finetune_operator import api, naming, no_phone_home, pod_security
from finetune_operator.settings import Settings

SPEC_VOLUME = "job-spec"


def owner_reference(job: api.FineTuneJob) -> dict[str, Any]:
    """Makes the child go with its FineTuneJob (garbage collection) and marks it as ours."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: api.FineTuneJob, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "labels": common_labels(job),
        "ownerReferences": [owner_reference(job)],
    }
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    return metadata


def common_labels(job: api.FineTuneJob) -> dict[str, str]:
    return {naming.JOB_LABEL: job.metadata.name, naming.MANAGED_BY_LABEL: naming.MANAGED_BY}


def job_document(job: api.FineTuneJob) -> dict[str, Any]:
    """The object the trainer reads: apiVersion, kind, name/namespace/uid and the full spec."""
    metadata = {"name": job.metadata.name}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    if job.metadata.uid:
        metadata["uid"] = job.metadata.uid
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": metadata,
        "spec": job.spec.to_wire(),
    }


@functools.lru_cache(maxsize=4096)
def job_yaml(document_json: str) -> str:
    """The job document as YAML, keyed by its JSON: every reconcile pass builds the ConfigMap,
    and PyYAML's pure-Python dumper would cost milliseconds each time (JSON keeps the order)."""
    return yaml.safe_dump(json.loads(document_json), sort_keys=False)


def build_configmap(job: api.FineTuneJob) -> dict[str, Any]:
    """The ConfigMap holding the job for the trainer (key `job.yaml`)."""
    text = job_yaml(json.dumps(job_document(job)))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, naming.configmap_name(job.metadata.name)),
        "data": {naming.SPEC_KEY: text},
    }


def pvc_claims(spec: api.FineTuneJobSpec) -> dict[str, bool]:
    """Every claim the job reads or writes, mapped to whether the job writes to it."""
    sources = [spec.model.source, spec.dataset.train.source]
    sources += [s.source for s in (spec.dataset.validation, spec.dataset.test) if s]
    sources += [m.source for m in spec.dataset.mix]
    claims: dict[str, bool] = {}
    for uri in sources:
        claim = naming.pvc_claim(uri)
        if claim:
            claims.setdefault(claim, False)
    output_claim = naming.pvc_claim(spec.output.destination)
    if output_claim:
        claims[output_claim] = True
    return dict(sorted(claims.items()))


def volumes_and_mounts(job: api.FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": SPEC_VOLUME, "configMap": {"name": naming.configmap_name(job.metadata.name)}}
    ]
    mounts: list[dict[str, Any]] = [
        {"name": SPEC_VOLUME, "mountPath": naming.SPEC_MOUNT_DIR, "readOnly": True}
    ]
    for claim, writable in pvc_claims(job.spec).items():
        volume = naming.pvc_volume_name(claim)
        volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable},
            }
        )
        mounts.append(
            {"name": volume, "mountPath": f"{naming.PVC_ROOT}/{claim}", "readOnly": not writable}
        )
    return volumes, mounts


# KubeRay builds the head service from the head container's ports, and only when none are
# declared does it add Ray's own; declaring `progress` therefore declares those too.
RAY_HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("metrics", 8080))


def head_ports(settings: Settings) -> list[dict[str, Any]]:
    """The head container's ports: Ray's well-known ones and the driver's /progress."""
    ports = [*RAY_HEAD_PORTS, ("progress", settings.progress_port)]
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports]


def trainer_container(
    job: api.FineTuneJob,
    settings: Settings,
    *,
    name: str,
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": job.spec.resources.image or settings.trainer_image,
        "env": [{"name": "FINETUNE_PVC_ROOT", "value": naming.PVC_ROOT}],
        "resources": resources,
        "volumeMounts": copy.deepcopy(mounts),
    }
    secret = job.spec.model.secret_ref
    if secret:
        # The Secret's keys become the trainer's environment; its values never leave it.
        container["envFrom"] = [{"secretRef": {"name": secret.name}}]
    return container


def pod_template(
    job: api.FineTuneJob,
    settings: Settings,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    *,
    node_selector: bool,
    shm_size: str | None = None,
) -> dict[str, Any]:
    """A pod template restricted Pod Security admits; `shm_size` adds an in-memory /dev/shm."""
    resources = job.spec.resources
    container = copy.deepcopy(container)
    container["securityContext"] = pod_security.container_security_context()
    # In every container, the submitter's too: KubeRay runs `ray start` on the head and the
    # workers and `ray job submit` in the submitter, so `finetune run` (the driver only)
    # cannot set them for those processes.
    quiet = no_phone_home.quiet_environment(job.spec, telemetry=settings.trainer_telemetry)
    if settings.trainer_telemetry:
        quiet[no_phone_home.OPT_IN_ENV] = "1"  # so that `finetune run` leaves them out too
    container.setdefault("env", []).extend(
        {"name": name, "value": value} for name, value in sorted(quiet.items())
    )
    volumes = copy.deepcopy(volumes)
    if shm_size is not None:
        volumes.append(pod_security.shm_volume(shm_size))
        container.setdefault("volumeMounts", []).append(pod_security.shm_mount())
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security.pod_security_context(settings),
        # The trainer never talks to the Kubernetes API: no token in its pods.
        "automountServiceAccountToken": False,
    }
    if node_selector and resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    metadata = {"labels": common_labels(job), "annotations": pod_security.scanner_annotations()}
    return {"metadata": metadata, "spec": pod}


def worker_resources(spec: api.ResourcesSpec) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(spec.cpus_per_worker), "memory": spec.memory_per_worker}
    limits = dict(amounts)
    if spec.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_worker)
    return {"requests": amounts, "limits": limits}


def fixed_resources(cpu: str, memory: str) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def build_rayjob(job: api.FineTuneJob, settings: Settings) -> dict[str, Any]:
    """The ray.io/v1 RayJob running `finetune run` against the job's ConfigMap."""
    volumes, mounts = volumes_and_mounts(job)
    resources = job.spec.resources
    policy = job.spec.run_policy

    head = trainer_container(
        job,
        settings,
        name="ray-head",
        resources=fixed_resources(settings.head_cpu, settings.head_memory),
        mounts=mounts,
    )
    # The driver runs on the head: it serves GET /progress there for the operator to poll.
    head["env"].append({"name": "FINETUNE_PROGRESS_PORT", "value": str(settings.progress_port)})
    # The driver writes serving manifests whose s3:// fetch runs the trainer image: the one
    # this operator is configured with, when the job names none of its own.
    head["env"].append({"name": "FINETUNE_TRAINER_IMAGE", "value": settings.trainer_image})
    head["ports"] = head_ports(settings)
    worker = trainer_container(
        job, settings, name="ray-worker", resources=worker_resources(resources), mounts=mounts
    )
    submitter = {
        "name": "ray-job-submitter",
        "image": resources.image or settings.trainer_image,
        "resources": fixed_resources(settings.submitter_cpu, settings.submitter_memory),
    }
    submitter_template = pod_template(job, settings, submitter, [], node_selector=False)
    submitter_template["spec"].pop("volumes")
    submitter_template["spec"]["restartPolicy"] = "Never"

    metadata = child_metadata(job, naming.rayjob_name(job.metadata.name))
    if policy.queue_name:
        metadata["labels"][naming.QUEUE_LABEL] = policy.queue_name

    spec: dict[str, Any] = {
        "entrypoint": f"finetune run {naming.SPEC_PATH}",
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "backoffLimit": policy.backoff_limit,
        "suspend": policy.suspend,
        "submitterPodTemplate": submitter_template,
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            "headGroupSpec": {
                # The head hosts the driver only: no CPUs for Ray tasks, so training lands on
                # the workers, and no GPU. No dashboard-host: KubeRay sets 0.0.0.0 itself
                # when it is absent, and K8sJobMode needs it, since the submitter pod reaches
                # the dashboard (job API, port 8265) through the head Service; 127.0.0.1
                # would break submission and a value of ours would only repeat KubeRay's.
                "rayStartParams": {"num-cpus": "0"},
                "template": pod_template(
                    job,
                    settings,
                    head,
                    volumes,
                    node_selector=False,
                    shm_size=pod_security.shm_size_limit(settings.head_memory),
                ),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": resources.workers,
                    "minReplicas": resources.workers,
                    "maxReplicas": resources.workers,
                    "rayStartParams": {},
                    "template": pod_template(
                        job,
                        settings,
                        worker,
                        volumes,
                        node_selector=True,
                        shm_size=pod_security.shm_size_limit(resources.memory_per_worker),
                    ),
                }
            ],
        },
    }
    if policy.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": spec}
