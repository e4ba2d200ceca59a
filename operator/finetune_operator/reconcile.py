"""One reconcile pass for one FineTuneJob: read, decide, create what is missing, write status.

Every kopf handler and the periodic resync call `reconcile`; it assumes at-least-once
execution: children are looked up before they are created, a 409 from our own child counts
as success, and status is written only when a field that matters changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
import yaml

from finetune_operator import api, builders, naming, timeutil
from finetune_operator.api import Phase
from finetune_operator.events import post_event
from finetune_operator.kube import ApiError, KubeClient, object_path
from finetune_operator.phases import Observation, attempts_from_rayjob, phase_from_rayjob
from finetune_operator.policies import deadline, immutable, suspend, ttl
from finetune_operator.settings import Settings
from finetune_operator.status import current_phase, status_update
from finetune_operator.validation import InvalidSpec, parse_job

logger = logging.getLogger(__name__)

KUBERAY_MISSING = (
    "KubeRay's RayJob API (ray.io/v1 rayjobs) is not served by this cluster: install the "
    "KubeRay operator (v1.2 or newer, e.g. `helm install kuberay-operator "
    "kuberay/kuberay-operator`); the job starts by itself once the API is there"
)


def job_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return object_path(api.GROUP, api.VERSION, api.PLURAL, namespace, name, subresource)


def rayjob_path(namespace: str, name: str | None = None) -> str:
    return object_path("ray.io", "v1", "rayjobs", namespace, name)


def configmap_path(namespace: str, name: str | None = None) -> str:
    return object_path("", "v1", "configmaps", namespace, name)


def manifest_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """What validation sees of a stored job: kind, identity and spec (no status, no
    annotations, which kopf rewrites and which would defeat the parse cache)."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: metadata[k] for k in ("name", "namespace", "uid") if k in metadata},
        "spec": body.get("spec"),
    }


class NameConflict(Exception):
    """A child's name is taken by an object this job does not own."""


@dataclasses.dataclass
class Context:
    """What every reconcile needs: settings, the API client and per-job bookkeeping."""

    settings: Settings
    client: KubeClient
    locks: dict[tuple[str, str], asyncio.Lock] = dataclasses.field(default_factory=dict)
    wakeups: dict[tuple[str, str], asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    # Strong references to running wake-up tasks: the loop keeps only weak ones.
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    kuberay_seen_at: float | None = None
    # Validation evaluates every CEL rule (tens of milliseconds); a spec is checked once.
    parsed: OrderedDict[str, api.FineTuneJob | InvalidSpec] = dataclasses.field(
        default_factory=OrderedDict
    )

    def parse(self, manifest: dict[str, Any]) -> api.FineTuneJob:
        """parse_job with a small cache keyed by the manifest's content."""
        key = json.dumps(manifest, sort_keys=True, default=str)
        result = self.parsed.get(key)
        if result is None:
            try:
                result = parse_job(manifest)
            except InvalidSpec as error:
                result = error
            self.parsed[key] = result
            while len(self.parsed) > 4096:
                self.parsed.popitem(last=False)
        if isinstance(result, InvalidSpec):
            raise result
        return result.model_copy(deep=True)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the bookkeeping of a job that is gone (a waiter keeps its own lock reference)."""
        self.locks.pop((namespace, name), None)
        handle = self.wakeups.pop((namespace, name), None)
        if handle is not None:
            handle.cancel()

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def wake_later(self, namespace: str, name: str, delay: float) -> None:
        """Reconcile the job again after `delay` seconds (for TTLs and deadlines)."""
        loop = asyncio.get_running_loop()
        key = (namespace, name)
        due = loop.time() + max(delay, 0.0)
        current = self.wakeups.get(key)
        if current is not None and not current.cancelled() and current.when() <= due:
            return
        if current is not None:
            current.cancel()

        def wake() -> None:
            self.wakeups.pop(key, None)
            task = loop.create_task(reconcile_quietly(self, namespace, name))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.wakeups[key] = loop.call_at(due, wake)

    async def kuberay_served(self) -> bool:
        """Whether ray.io/v1 rayjobs is served; a positive answer is trusted for a minute."""
        loop = asyncio.get_running_loop()
        if self.kuberay_seen_at is not None and loop.time() - self.kuberay_seen_at < 60:
            return True
        if await self.client.serves("ray.io", "v1", "rayjobs"):
            self.kuberay_seen_at = loop.time()
            return True
        return False


async def reconcile_quietly(context: Context, namespace: str, name: str) -> None:
    """reconcile for background callers: errors are logged, the next pass tries again."""
    try:
        await reconcile(context, namespace, name)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        logger.debug("reconcile %s/%s: %s", namespace, name, error)
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
        logger.warning("reconcile %s/%s failed: %s", namespace, name, error)


async def reconcile(context: Context, namespace: str, name: str) -> None:
    """Bring one FineTuneJob's children and status in line with its spec and its RayJob."""
    async with context.lock(namespace, name):
        body = await context.client.get(job_path(namespace, name))
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            context.forget(namespace, name)
            return
        try:
            await _reconcile(context, body)
        except ApiError as error:
            if error.status in (409, 429) or error.status >= 500:
                raise kopf.TemporaryError(
                    str(error), delay=context.settings.retry_seconds
                ) from error
            raise


async def _reconcile(context: Context, body: dict[str, Any]) -> None:
    status = body.get("status") or {}
    phase = current_phase(status)
    now = timeutil.now()
    if phase is not None and phase.is_terminal():
        await _apply_ttl(context, body, now)
        return

    try:
        job = context.parse(manifest_of(body))
    except InvalidSpec as error:
        message = "; ".join(str(p) for p in error.problems)
        if status.get("rayJobName"):
            # An edit broke a job that already runs: the edit is refused (the handler posts a
            # Warning), and the job keeps following the RayJob built from its earlier spec.
            await _follow_only(context, body, status["rayJobName"])
            return
        await _write(context, body, Observation(Phase.FAILED, "InvalidSpec", message))
        raise kopf.PermanentError(f"invalid spec: {message}") from error

    if not await context.kuberay_served():
        await _write(context, body, Observation(Phase.PENDING, "KubeRayMissing", KUBERAY_MISSING))
        raise kopf.TemporaryError(KUBERAY_MISSING, delay=context.settings.kuberay_retry_seconds)

    namespace = job.metadata.namespace or "default"
    try:
        configmap = await ensure_child(
            context.client, configmap_path(namespace), builders.build_configmap(job), job
        )
        rayjob = await ensure_child(
            context.client,
            rayjob_path(namespace),
            builders.build_rayjob(job, context.settings),
            job,
        )
    except NameConflict as conflict:
        await _write(context, body, Observation(Phase.FAILED, "NameConflict", str(conflict)))
        raise kopf.PermanentError(str(conflict)) from conflict

    rayjob_status = rayjob.get("status") or {}
    await _sync_suspend(context, body, rayjob, job.spec.run_policy.suspend)
    observation = suspend.apply_suspend(
        phase_from_rayjob(rayjob_status), suspend=job.spec.run_policy.suspend
    )

    limit = job.spec.run_policy.active_deadline_seconds
    left = deadline.seconds_left(status.get("startTime"), limit, now)
    deadline_passed = left is not None and left <= 0 and not observation.phase.is_terminal()
    if limit is not None and deadline_passed:
        observation = deadline.deadline_observation(limit)
        # Stop the Ray cluster now rather than wait for KubeRay's own clock.
        await context.client.delete(rayjob_path(namespace, rayjob["metadata"]["name"]))

    # The children carry the spec they were built from; an edit since then takes effect only
    # while the RayJob is suspended. A refused edit is not acted on: its generation is not
    # observed.
    in_effect = (yaml.safe_load(configmap.get("data", {}).get(naming.SPEC_KEY) or "{}") or {}).get(
        "spec"
    )
    changed = immutable.changed_fields(in_effect, job.spec.to_wire())
    if changed and not deadline_passed and immutable.can_apply_now(rayjob):
        rayjob = await _apply_spec(context, body, job, changed)
        changed = []
    generation = None if changed else body.get("metadata", {}).get("generation")
    update = await _write(
        context,
        body,
        observation,
        generation=generation,
        rayjob=rayjob,
        rayjob_name=rayjob["metadata"]["name"],
        attempts=attempts_from_rayjob(rayjob_status),
    )
    started = update.get("startTime") or status.get("startTime")
    left = deadline.seconds_left(started, limit, now)
    if left is not None and left > 0 and not observation.phase.is_terminal():
        context.wake_later(namespace, job.metadata.name, left)
    if update.get("completionTime"):
        await _apply_ttl(context, {**body, "status": {**status, **update}}, now)


async def _follow_only(context: Context, body: Mapping[str, Any], rayjob_name: str) -> None:
    """Mirror the RayJob's status alone, for a job whose current spec cannot be used."""
    namespace = body["metadata"].get("namespace") or "default"
    rayjob = await context.client.get(rayjob_path(namespace, rayjob_name))
    if rayjob is None:
        return
    rayjob_status = rayjob.get("status") or {}
    await _write(
        context,
        body,
        phase_from_rayjob(rayjob_status),
        rayjob=rayjob,
        attempts=attempts_from_rayjob(rayjob_status),
    )


async def _apply_spec(
    context: Context, body: Mapping[str, Any], job: api.FineTuneJob, changed: list[str]
) -> dict[str, Any]:
    """Rewrite the ConfigMap and the suspended RayJob from the edited spec."""
    namespace = job.metadata.namespace or "default"
    configmap = builders.build_configmap(job)
    rayjob = builders.build_rayjob(job, context.settings)
    await context.client.merge_patch(
        configmap_path(namespace, configmap["metadata"]["name"]), {"data": configmap["data"]}
    )
    patch = {"metadata": {"labels": rayjob["metadata"]["labels"]}, "spec": rayjob["spec"]}
    updated = await context.client.merge_patch(
        rayjob_path(namespace, rayjob["metadata"]["name"]), patch
    )
    await post_event(
        context.client,
        body,
        type_="Normal",
        reason="SpecApplied",
        message=f"{', '.join(changed)} changed while suspended: the RayJob now carries the "
        "new spec, used when the job resumes",
    )
    return updated


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
            if error.status != 409:
                raise
        existing = await client.get(path)  # created by an earlier attempt of ours, or by others
        if existing is None:
            raise kopf.TemporaryError(
                f"{desired['kind']} {name} vanished after a conflict", delay=1
            )
    if not is_owned_by(existing, job):
        raise NameConflict(
            f"a {desired['kind']} named {name} already exists in namespace "
            f"{job.metadata.namespace} and is not owned by this FineTuneJob; the operator "
            "never adopts or overwrites it: delete it or rename the FineTuneJob"
        )
    return existing


def is_owned_by(obj: Mapping[str, Any], job: api.FineTuneJob) -> bool:
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        ref.get("kind") == api.KIND
        and ref.get("controller")
        and ref.get("uid") == (job.metadata.uid or "")
        and ref.get("name") == job.metadata.name
        for ref in references
    )


async def _sync_suspend(
    context: Context, body: Mapping[str, Any], rayjob: Mapping[str, Any], wanted: bool
) -> None:
    """Make the RayJob's spec.suspend follow spec.runPolicy.suspend while it is unfinished."""
    deployment = (rayjob.get("status") or {}).get("jobDeploymentStatus") or ""
    if bool((rayjob.get("spec") or {}).get("suspend")) == wanted or deployment in (
        "Complete",
        "Failed",
    ):
        return
    metadata = rayjob["metadata"]
    path = rayjob_path(metadata.get("namespace") or "default", metadata["name"])
    await context.client.merge_patch(path, {"spec": {"suspend": wanted}})
    reason, verb = ("Suspending", "stopping") if wanted else ("Resuming", "restarting")
    await post_event(
        context.client,
        body,
        type_="Normal",
        reason=reason,
        message=f"spec.runPolicy.suspend is {str(wanted).lower()}: {verb} the Ray cluster",
    )


async def _apply_ttl(context: Context, body: Mapping[str, Any], now: Any) -> None:
    spec = body.get("spec") or {}
    limit = (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    status = body.get("status") or {}
    left = ttl.seconds_until_deletion(status.get("completionTime"), limit, now)
    if left is None:
        return
    metadata = body["metadata"]
    namespace = metadata.get("namespace") or "default"
    if left > 0:
        context.wake_later(namespace, metadata["name"], left)
        return
    # Children go with it: their ownerReferences let the garbage collector remove them.
    if await context.client.delete(job_path(namespace, metadata["name"])):
        logger.info(
            "deleted %s/%s: finished %ss ago (ttlSecondsAfterFinished)",
            namespace,
            metadata["name"],
            limit,
        )


async def _write(
    context: Context,
    body: Mapping[str, Any],
    observation: Observation,
    **fields: Any,
) -> dict[str, Any]:
    """Patch the status fields that changed and post an Event when the phase changed."""
    status = body.get("status") or {}
    update = status_update(
        status,
        observation,
        now=timeutil.format_time(timeutil.now()),
        max_message_length=context.settings.max_message_length,
        **fields,
    )
    if not update:
        return update
    metadata = body["metadata"]
    path = job_path(metadata.get("namespace") or "default", metadata["name"], "status")
    await context.client.merge_patch(path, {"status": update})
    if "phase" in update or status.get("reason") != observation.reason:
        failed = observation.phase is Phase.FAILED or observation.reason == "KubeRayMissing"
        await post_event(
            context.client,
            body,
            type_="Warning" if failed else "Normal",
            reason=observation.reason,
            message=f"{observation.phase.value}: {update.get('message', observation.message)}",
        )
    return update
