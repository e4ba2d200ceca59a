"""A FineTuneJob's children (its ConfigMap and RayJob): where they live, whose they are, and
how they are found, created or rebuilt.

A child is ours only when its controller ownerReference names this job's uid; a same-named
object that is not is never adopted or overwritten.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import kopf
import yaml

from finetune_operator import api, builders, naming
from finetune_operator.kube import ApiError, KubeClient, object_path
from finetune_operator.settings import Settings


class NameConflict(Exception):
    """A child's name is taken by an object this job does not own."""


class PredecessorPending(Exception):
    """A child's name is still held by the child of an earlier job of the same name."""


class UnbuildableSpec(Exception):
    """The spec passed validation, yet a builder cannot turn it into a child."""


class ChildRejected(Exception):
    """The API server refused a child as invalid (422); the message names its fields."""

    def __init__(self, kind: str, name: str, error: ApiError) -> None:
        body = error.body if isinstance(error.body, Mapping) else {}
        causes = (body.get("details") or {}).get("causes") or []
        reasons = [_describe_cause(c) for c in causes if isinstance(c, Mapping)]
        detail = "; ".join(r for r in reasons if r) or body.get("message") or str(error)
        super().__init__(f"the API server refused the {kind} {name}: {detail}")


def _describe_cause(cause: Mapping[str, Any]) -> str:
    """`field: message` from one of a Status's details.causes."""
    message = str(cause.get("message") or "")
    return f"{cause['field']}: {message}" if cause.get("field") else message


def job_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return object_path(api.GROUP, api.VERSION, api.PLURAL, namespace, name, subresource)


def rayjob_path(namespace: str, name: str | None = None) -> str:
    return object_path("ray.io", "v1", "rayjobs", namespace, name)


def configmap_path(namespace: str, name: str | None = None) -> str:
    return object_path("", "v1", "configmaps", namespace, name)


def path_of_rayjob(rayjob: Mapping[str, Any]) -> str:
    metadata = rayjob["metadata"]
    return rayjob_path(metadata.get("namespace") or "default", metadata["name"])


async def ensure_children(
    client: KubeClient, job: api.FineTuneJob, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap and the RayJob as stored, found or created now (the ConfigMap first: the
    RayJob mounts it)."""
    namespace = job.metadata.namespace or "default"
    desired_configmap, desired_rayjob = build_children(job, settings)
    configmap = await ensure_child(client, configmap_path(namespace), desired_configmap, job)
    rayjob = await ensure_child(client, rayjob_path(namespace), desired_rayjob, job)
    return configmap, rayjob


def build_children(
    job: api.FineTuneJob, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The desired ConfigMap and RayJob. The builders raise ValueError (or OverflowError) only
    on input validation should have refused: that fails the job rather than retry forever."""
    try:
        return builders.build_configmap(job), builders.build_rayjob(job, settings)
    except (ValueError, OverflowError) as error:
        raise UnbuildableSpec(str(error)) from error


async def rebuild_children(
    client: KubeClient, job: api.FineTuneJob, settings: Settings
) -> dict[str, Any]:
    """Rewrite the ConfigMap and the (suspended) RayJob from the job's spec; the RayJob after."""
    namespace = job.metadata.namespace or "default"
    configmap, rayjob = build_children(job, settings)
    await _patch_child(client, configmap_path(namespace), configmap, {"data": configmap["data"]})
    patch = {"metadata": {"labels": rayjob["metadata"]["labels"]}, "spec": rayjob["spec"]}
    return await _patch_child(client, rayjob_path(namespace), rayjob, patch)


async def _patch_child(
    client: KubeClient, collection: str, desired: Mapping[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    name = desired["metadata"]["name"]
    try:
        return await client.merge_patch(f"{collection}/{name}", patch)
    except ApiError as error:
        if error.status == 422:
            raise ChildRejected(desired["kind"], name, error) from error
        raise


def carried_spec(configmap: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec the children were built from, as the ConfigMap hands it to the trainer."""
    spec = _spec_in(str((configmap.get("data") or {}).get(naming.SPEC_KEY) or "{}"))
    return None if spec is None else dict(json.loads(spec))


@functools.lru_cache(maxsize=4096)
def _spec_in(text: str) -> str | None:
    """The spec of a job document, as JSON; parsed once per text, since every reconcile pass
    reads the ConfigMap and PyYAML's pure-Python loader costs milliseconds."""
    document = yaml.safe_load(text) or {}
    spec = document.get("spec") if isinstance(document, dict) else None
    return json.dumps(spec, default=str) if isinstance(spec, dict) else None


async def ensure_child(
    client: KubeClient, collection: str, desired: dict[str, Any], job: api.FineTuneJob
) -> dict[str, Any]:
    """The child as stored: found, or created now. A same-named foreign object is refused."""
    name = desired["metadata"]["name"]
    path = f"{collection}/{name}"
    existing = await client.get(path)
    if existing is None:
        try:
            return await client.create(collection, desired)
        except ApiError as error:
            if error.status == 422:  # a retry would be refused the same way
                raise ChildRejected(desired["kind"], name, error) from error
            if error.status != 409:
                raise
        existing = await client.get(path)  # created by an earlier attempt of ours, or by others
        if existing is None:
            raise kopf.TemporaryError(
                f"{desired['kind']} {name} vanished after a conflict", delay=1
            )
    if not is_owned_by(existing, job):
        if is_left_by_predecessor(existing, job):
            raise PredecessorPending(
                f"the {desired['kind']} {name} of an earlier FineTuneJob named "
                f"{job.metadata.name} is still being deleted; this job starts once it is gone"
            )
        raise NameConflict(
            f"a {desired['kind']} named {name} already exists in namespace "
            f"{job.metadata.namespace} and is not owned by this FineTuneJob; the operator "
            "never adopts or overwrites it: delete it or rename the FineTuneJob"
        )
    return existing


def is_left_by_predecessor(obj: Mapping[str, Any], job: api.FineTuneJob) -> bool:
    """A child of a deleted job of the same name, which the garbage collector will remove
    (`kubectl delete` then `apply` of the same file is common)."""
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return True
    return any(
        ref.get("kind") == api.KIND
        and ref.get("controller")
        and ref.get("name") == job.metadata.name
        for ref in metadata.get("ownerReferences") or []
    )


def is_owned_by(obj: Mapping[str, Any], job: api.FineTuneJob) -> bool:
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        ref.get("kind") == api.KIND
        and ref.get("controller")
        and ref.get("uid") == (job.metadata.uid or "")
        and ref.get("name") == job.metadata.name
        for ref in references
    )
