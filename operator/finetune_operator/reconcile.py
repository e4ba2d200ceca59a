"""One reconcile pass for one FineTuneJob: read, decide, create what is missing, write status.

Every kopf handler and the periodic resync call `reconcile`; it assumes at-least-once
execution: children are looked up before they are created, a 409 from our own child counts
as success, and status is written only when a field that matters changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from finetune_operator import api, children, kuberay, timeutil
from finetune_operator.api import Phase
from finetune_operator.children import (
    NameConflict,
    PredecessorPending,
    job_path,
    rayjob_path,
)
from finetune_operator.context import Context
from finetune_operator.events import post_event
from finetune_operator.kube import ApiError
from finetune_operator.phases import Observation, attempts_from_rayjob, phase_from_rayjob
from finetune_operator.policies import deadline, immutable, suspend, ttl
from finetune_operator.status import current_phase, status_update
from finetune_operator.validation import InvalidSpec

logger = logging.getLogger(__name__)

KUBERAY_MISSING = (
    "KubeRay's RayJob API (ray.io/v1 rayjobs) is not served by this cluster: install the "
    "KubeRay operator (v1.2 or newer, e.g. `helm install kuberay-operator "
    "kuberay/kuberay-operator`); the job starts by itself once the API is there"
)


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


def wake_later(context: Context, namespace: str, name: str, delay: float) -> None:
    """Reconcile the job again after `delay` seconds (for TTLs and deadlines)."""
    loop = asyncio.get_running_loop()
    key = (namespace, name)
    due = loop.time() + max(delay, 0.0)
    current = context.wakeups.get(key)
    if current is not None and not current.cancelled() and current.when() <= due:
        return
    if current is not None:
        current.cancel()

    def wake() -> None:
        context.wakeups.pop(key, None)
        task = loop.create_task(reconcile_quietly(context, namespace, name))
        context.tasks.add(task)
        task.add_done_callback(context.tasks.discard)

    context.wakeups[key] = loop.call_at(due, wake)


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
    job = await _parse(context, body)
    if job is None:
        return
    if not await context.kuberay_served():
        await _write(context, body, Observation(Phase.PENDING, "KubeRayMissing", KUBERAY_MISSING))
        raise kopf.TemporaryError(KUBERAY_MISSING, delay=context.settings.kuberay_retry_seconds)
    configmap, rayjob = await _ensure_children(context, body, job)
    await _sync_suspend(context, body, rayjob, job.spec.run_policy.suspend)
    observation = await _observe(context, job, rayjob, status.get("startTime"), now)
    rayjob, accepted = await _spec_in_effect(context, body, job, configmap, rayjob, observation)
    update = await _write(
        context,
        body,
        observation,
        generation=body.get("metadata", {}).get("generation") if accepted else None,
        rayjob=rayjob,
        rayjob_name=rayjob["metadata"]["name"],
        attempts=attempts_from_rayjob(rayjob.get("status")),
    )
    new_status = {**status, **update}
    left = deadline.seconds_left(
        new_status.get("startTime"), job.spec.run_policy.active_deadline_seconds, now
    )
    if left is not None and left > 0 and not observation.phase.is_terminal():
        wake_later(context, job.metadata.namespace or "default", job.metadata.name, left)
    if update.get("completionTime"):
        await _apply_ttl(context, {**body, "status": new_status}, now)


async def _parse(context: Context, body: dict[str, Any]) -> api.FineTuneJob | None:
    """The typed job; None when its spec is invalid and that has been dealt with."""
    try:
        return context.parse(manifest_of(body))
    except InvalidSpec as error:
        message = "; ".join(str(p) for p in error.problems)
        rayjob_name = (body.get("status") or {}).get("rayJobName")
        if rayjob_name:
            # An edit broke a job that already runs: the edit is refused (the handler posts a
            # Warning), and the job keeps following the RayJob built from its earlier spec.
            await _follow_only(context, body, rayjob_name)
            return None
        await _write(context, body, Observation(Phase.FAILED, "InvalidSpec", message))
        raise kopf.PermanentError(f"invalid spec: {message}") from error


async def _ensure_children(
    context: Context, body: dict[str, Any], job: api.FineTuneJob
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap and the RayJob, found or created; a foreign namesake fails the job."""
    try:
        return await children.ensure_children(context.client, job, context.settings)
    except NameConflict as conflict:
        await _write(context, body, Observation(Phase.FAILED, "NameConflict", str(conflict)))
        raise kopf.PermanentError(str(conflict)) from conflict
    except PredecessorPending as waiting:
        await _write(
            context, body, Observation(Phase.PENDING, "PreviousJobTerminating", str(waiting))
        )
        raise kopf.TemporaryError(str(waiting), delay=context.settings.retry_seconds) from waiting


async def _observe(
    context: Context,
    job: api.FineTuneJob,
    rayjob: dict[str, Any],
    start_time: str | None,
    now: Any,
) -> Observation:
    """The job's phase from its RayJob, with the suspend and deadline policies applied."""
    policy = job.spec.run_policy
    observation = suspend.apply_suspend(
        phase_from_rayjob(rayjob.get("status")), suspend=policy.suspend
    )
    left = deadline.seconds_left(start_time, policy.active_deadline_seconds, now)
    if policy.active_deadline_seconds is None or left is None or left > 0:
        return observation
    if observation.phase.is_terminal():
        return observation
    # Stop the Ray cluster now rather than wait for KubeRay's own clock.
    namespace = job.metadata.namespace or "default"
    await context.client.delete(rayjob_path(namespace, rayjob["metadata"]["name"]))
    return deadline.deadline_observation(policy.active_deadline_seconds)


async def _spec_in_effect(
    context: Context,
    body: dict[str, Any],
    job: api.FineTuneJob,
    configmap: dict[str, Any],
    rayjob: dict[str, Any],
    observation: Observation,
) -> tuple[dict[str, Any], bool]:
    """The RayJob, and whether the job's current spec is the one its children carry.

    An edit since the children were built takes effect only while the RayJob is suspended;
    otherwise it is refused, not acted on, and its generation is not observed.
    """
    changed = immutable.changed_fields(children.carried_spec(configmap), job.spec.to_wire())
    if not changed:
        return rayjob, True
    if observation.phase.is_terminal() or not immutable.can_apply_now(rayjob):
        return rayjob, False
    return await _apply_spec(context, body, job, changed), True


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
    updated = await children.rebuild_children(context.client, job, context.settings)
    await post_event(
        context.client,
        body,
        type_="Normal",
        reason="SpecApplied",
        message=f"{', '.join(changed)} changed while suspended: the RayJob now carries the "
        "new spec, used when the job resumes",
    )
    return updated


async def _sync_suspend(
    context: Context, body: Mapping[str, Any], rayjob: Mapping[str, Any], wanted: bool
) -> None:
    """Make the RayJob's spec.suspend follow spec.runPolicy.suspend while it is unfinished."""
    if bool((rayjob.get("spec") or {}).get("suspend")) == wanted or kuberay.is_terminal(rayjob):
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
        wake_later(context, namespace, metadata["name"], left)
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
