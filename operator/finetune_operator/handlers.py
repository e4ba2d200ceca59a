"""Thin kopf handlers: each one names when it runs and hands the job to `reconcile`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from finetune_operator import api, naming
from finetune_operator.context import Context
from finetune_operator.events import post_event
from finetune_operator.kube import Login
from finetune_operator.policies import immutable
from finetune_operator.reconcile import manifest_of, reconcile, reconcile_quietly
from finetune_operator.status import parse_status
from finetune_operator.validation import InvalidSpec

RAYJOBS = ("ray.io", "v1", "rayjobs")
FINETUNEJOBS = (api.GROUP, api.VERSION, api.PLURAL)


def invalid_spec_problems(context: Context, body: kopf.Body) -> str:
    """The problems of the job's current spec ("" when it is valid)."""
    try:
        context.parse(manifest_of(dict(body)))
    except InvalidSpec as error:
        return "; ".join(str(p) for p in error.problems)
    return ""


def build_registry(context: Context, login: Login) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, bound to one Context."""
    registry = kopf.OperatorRegistry()
    backoff = context.settings.retry_seconds

    @kopf.on.login(id="login", registry=registry)
    def log_in(**_: Any) -> kopf.ConnectionInfo:
        return login()

    @kopf.on.cleanup(id="stop-progress-reads", registry=registry)
    async def stop_progress_reads(**_: Any) -> None:
        # Before kopf waits for the tasks it did not start: the reads would hold it up.
        await context.progress.close()

    # Short ids: kopf names its progress annotations after them (finetune.io/<id>).
    @kopf.on.create(*FINETUNEJOBS, id="reconcile", registry=registry, backoff=backoff)
    @kopf.on.resume(*FINETUNEJOBS, id="reconcile", registry=registry, backoff=backoff)
    async def start_or_resume_job(name: str, namespace: str | None, **_: Any) -> None:
        await reconcile(context, namespace or "default", name)

    @kopf.on.update(
        *FINETUNEJOBS, id="spec-change", field="spec", registry=registry, backoff=backoff
    )
    async def apply_spec_change(
        name: str,
        namespace: str | None,
        old: Any,
        new: Any,
        status: kopf.Status,
        body: kopf.Body,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **_: Any,
    ) -> None:
        problems = invalid_spec_problems(context, body)
        for event in immutable.edit_events(old, new, parse_status(status), problems):
            logger.warning(event.message)
            await post_event(context.client, dict(body), event)
        await reconcile(context, namespace or "default", name)

    @kopf.on.event(*FINETUNEJOBS, id="forget-deleted", registry=registry)
    async def forget_deleted_job(
        event: kopf.RawEvent, name: str, namespace: str | None, **_: Any
    ) -> None:
        # An event handler, not a deletion handler: it adds no finalizer to the job.
        if event.get("type") == "DELETED":
            context.forget(namespace or "default", name)

    @kopf.on.event(
        *RAYJOBS, id="follow-rayjob", labels={naming.JOB_LABEL: kopf.PRESENT}, registry=registry
    )
    async def follow_rayjob(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        job_name = body.metadata.labels.get(naming.JOB_LABEL)
        if job_name:
            await reconcile_quietly(context, namespace or "default", job_name)

    return registry
