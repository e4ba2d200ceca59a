"""One reconcile pass for one FineTuneJob: read, decide, act, write status once.

Every kopf handler and the periodic resync call `reconcile`; it assumes at-least-once
execution: children are looked up before they are created, a 409 from our own child counts
as success, and status is written only when a field that matters changed. The policies
decide (see `policies/`); this module carries out what they decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import kopf

from finetune_operator import api, children, kuberay, progress_poll, timeutil
from finetune_operator.actions import ApplySpec, DeleteJob, Fail, KeepSpec, WakeAt
from finetune_operator.api import Phase
from finetune_operator.children import (
    ChildRejected,
    NameConflict,
    PredecessorPending,
    UnbuildableSpec,
    job_path,
    rayjob_path,
)
from finetune_operator.context import Context
from finetune_operator.events import post_event
from finetune_operator.kube import ApiError
from finetune_operator.outcome import Outcome
from finetune_operator.phases import (
    INVALID_INPUT,
    Observation,
    attempts_from_rayjob,
    phase_from_rayjob,
)
from finetune_operator.policies import deadline, immutable, suspend, ttl
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
    async with context.lock(namespace, name), context.metrics.timed_pass():
        body = await context.client.get(job_path(namespace, name))
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            context.forget(namespace, name)
            return
        outcome = Outcome.start(
            body, timeutil.now(), max_message_length=context.settings.max_message_length
        )
        with retry_transient_errors(context.settings.retry_seconds):
            try:
                await _act(context, body, outcome)
            except (kopf.TemporaryError, kopf.PermanentError):
                await _write(context, body, outcome)  # the pass stops; what it found is kept
                _export(context, body, outcome)
                raise
            await _write(context, body, outcome)
            _export(context, body, outcome)
            await _apply_ttl(context, body, outcome)


def _export(context: Context, body: Mapping[str, Any], outcome: Outcome) -> None:
    """The job's metrics as the pass leaves its status; the pass that finishes it times it."""
    metadata = body["metadata"]
    context.metrics.record_job(
        metadata.get("namespace") or "default", metadata["name"], outcome.status
    )
    if not outcome.finished and outcome.status.phase and outcome.status.phase.is_terminal():
        context.metrics.record_finished(outcome.status, metadata.get("creationTimestamp"))


@contextlib.contextmanager
def retry_transient_errors(delay: float) -> Iterator[None]:
    """An API error a later pass can get past (a race, throttling, a 5xx) asks kopf to retry."""
    try:
        yield
    except ApiError as error:
        if error.status in (409, 429) or error.status >= 500:
            raise kopf.TemporaryError(str(error), delay=delay) from error
        raise


async def _act(context: Context, body: dict[str, Any], outcome: Outcome) -> None:
    """Create what is missing and carry out the policies; record the status to write."""
    if outcome.finished:
        metadata = body.get("metadata") or {}
        context.progress.stop((metadata.get("namespace") or "default", metadata.get("name", "")))
        return
    job = await _parse(context, body, outcome)
    if job is None:
        return
    if not await context.kuberay_served():
        outcome.observe(Observation(Phase.PENDING, "KubeRayMissing", KUBERAY_MISSING))
        raise kopf.TemporaryError(KUBERAY_MISSING, delay=context.settings.kuberay_retry_seconds)
    with _children_failures(context, outcome):
        configmap, rayjob = await children.ensure_children(context.client, job, context.settings)
    await _sync_suspend(context, rayjob, job.spec.run_policy.suspend, outcome)
    observation = await _observe(context, job, rayjob, outcome)
    decision = immutable.decide(children.carried_spec(configmap), job, observation.phase, rayjob)
    if isinstance(decision, ApplySpec):
        with _children_failures(context, outcome):
            rayjob = await children.rebuild_children(context.client, job, context.settings)
        outcome.queue(decision.event)
    generation = body.get("metadata", {}).get("generation")
    outcome.observe(
        observation,
        generation=None if isinstance(decision, KeepSpec) else generation,
        rayjob=rayjob,
        rayjob_name=rayjob["metadata"]["name"],
        attempts=attempts_from_rayjob(rayjob.get("status"), ended=observation.phase.is_terminal()),
    )
    await _report_progress(context, job, rayjob, outcome)


async def _report_progress(
    context: Context, job: api.FineTuneJob, rayjob: Mapping[str, Any], outcome: Outcome
) -> None:
    """Follow the trainer's /progress while the job runs and carry what it said into status;
    the pass that ends the run takes the last of it and stops the reads."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    key = (namespace, name)
    running = outcome.status.phase is Phase.RUNNING
    url = progress_poll.progress_url(rayjob.get("status"), context.settings.progress_port)
    if running and url:
        context.progress.follow(
            key, url, wake=lambda delay: wake_later(context, namespace, name, delay)
        )
    watch = context.progress.watches.get(key)
    if watch is None:
        return
    if not running:
        await context.progress.settle(key)  # a read under way may carry the final result
    loop_time = asyncio.get_running_loop().time()
    progress_poll.take_progress(watch, outcome, context.settings, now=loop_time)
    if not running:
        context.progress.stop(key)


async def _parse(
    context: Context, body: dict[str, Any], outcome: Outcome
) -> api.FineTuneJob | None:
    """The typed job; None when its spec is invalid and that has been dealt with."""
    try:
        return context.parse(manifest_of(body))
    except InvalidSpec as error:
        problems = "; ".join(str(p) for p in error.problems)
        decision = immutable.on_invalid_spec(outcome.stored, problems)
        if isinstance(decision, Fail):
            outcome.observe(decision.observation)
            raise kopf.PermanentError(f"invalid spec: {problems}") from error
        await _follow_rayjob(context, body, decision.name, outcome)
        return None


async def _follow_rayjob(
    context: Context, body: Mapping[str, Any], rayjob_name: str, outcome: Outcome
) -> None:
    """Mirror the RayJob's status alone, for a job whose current spec cannot be used."""
    namespace = body["metadata"].get("namespace") or "default"
    rayjob = await context.client.get(rayjob_path(namespace, rayjob_name))
    if rayjob is None:
        return
    observation = phase_from_rayjob(rayjob.get("status"))
    outcome.observe(observation, rayjob=rayjob, attempts=attempts_from_rayjob(rayjob.get("status")))


@contextlib.contextmanager
def _children_failures(context: Context, outcome: Outcome) -> Iterator[None]:
    """What building or creating the children can run into, as the job's status: a foreign
    namesake, a predecessor still going, or a spec no child can be made of."""
    try:
        yield
    except NameConflict as conflict:
        outcome.observe(Observation(Phase.FAILED, "NameConflict", str(conflict)))
        raise kopf.PermanentError(str(conflict)) from conflict
    except PredecessorPending as waiting:
        outcome.observe(Observation(Phase.PENDING, "PreviousJobTerminating", str(waiting)))
        raise kopf.TemporaryError(str(waiting), delay=context.settings.retry_seconds) from waiting
    except UnbuildableSpec as error:
        message = f"the spec passed validation but cannot be built into a RayJob: {error}"
        outcome.observe(Observation(Phase.FAILED, "InvalidSpec", message))
        raise kopf.PermanentError(message) from error
    except ChildRejected as rejected:
        outcome.observe(Observation(Phase.FAILED, "ChildRejected", str(rejected)))
        raise kopf.PermanentError(str(rejected)) from rejected


async def _sync_suspend(
    context: Context, rayjob: Mapping[str, Any], wanted: bool, outcome: Outcome
) -> None:
    action = suspend.decide(rayjob, wanted)
    if action is not None:
        await context.client.merge_patch(children.path_of_rayjob(rayjob), action.patch)
        outcome.queue(action.event)


async def _observe(
    context: Context, job: api.FineTuneJob, rayjob: dict[str, Any], outcome: Outcome
) -> Observation:
    """The job's phase from its RayJob, with the suspend and deadline policies applied."""
    policy = job.spec.run_policy
    observation = suspend.apply_suspend(
        phase_from_rayjob(rayjob.get("status")), suspend=policy.suspend
    )
    if observation.reason == INVALID_INPUT and not kuberay.is_terminal(rayjob):
        # Every attempt would refuse the same input: spend none of backoffLimit on it.
        await context.client.delete(children.path_of_rayjob(rayjob))
    # The deadline counts from the startTime this observation gives the job.
    outcome.observe(observation, rayjob=rayjob)
    action = deadline.decide(policy.active_deadline_seconds, outcome.status, outcome.now)
    if isinstance(action, WakeAt):
        wake_later(context, job.metadata.namespace or "default", job.metadata.name, action.seconds)
    if isinstance(action, Fail):
        # Stop the Ray cluster now rather than wait for KubeRay's own clock.
        await context.client.delete(children.path_of_rayjob(rayjob))
        return action.observation
    return observation


async def _write(context: Context, body: Mapping[str, Any], outcome: Outcome) -> None:
    """The pass's one status write, then its Events in the order they were queued."""
    patch = outcome.patch()
    if patch:
        metadata = body["metadata"]
        path = job_path(metadata.get("namespace") or "default", metadata["name"], "status")
        await context.client.merge_patch(path, {"status": patch})
    for event in outcome.events(patch):
        await post_event(context.client, body, event)


async def _apply_ttl(context: Context, body: Mapping[str, Any], outcome: Outcome) -> None:
    """Delete a finished job whose TTL has passed (after its final status is written)."""
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    action = ttl.decide(run_policy.get("ttlSecondsAfterFinished"), outcome.status, outcome.now)
    metadata = body["metadata"]
    namespace, name = metadata.get("namespace") or "default", metadata["name"]
    if isinstance(action, WakeAt):
        wake_later(context, namespace, name, action.seconds)
    elif isinstance(action, DeleteJob) and await context.client.delete(job_path(namespace, name)):
        # Children go with it: their ownerReferences let the garbage collector remove them.
        logger.info("deleted %s/%s: %s", namespace, name, action.why)
