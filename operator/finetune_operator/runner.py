"""Run the operator in-process: kopf's reactor plus the periodic resync, on one event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from typing import Any

import aiohttp
import kopf

from finetune_operator import api
from finetune_operator.context import Context
from finetune_operator.handlers import build_registry
from finetune_operator.kube import ApiError, KubeClient, Login, object_path
from finetune_operator.reconcile import reconcile_quietly
from finetune_operator.settings import Settings
from finetune_operator.status import current_phase
from finetune_operator.validation import parse_job

logger = logging.getLogger(__name__)


def kopf_settings(settings: Settings, *, peering: str | None) -> kopf.OperatorSettings:
    """kopf's knobs, each chosen on purpose."""
    config = kopf.OperatorSettings()
    # Handler progress and the last-handled spec live in annotations under our own prefix:
    # the structural status schema would prune kopf's default `status.kopf` on a real cluster.
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # There are no deletion handlers and no kopf timers or daemons (the resync loop replaces
    # them), so kopf adds no finalizer: a stopped operator never blocks `kubectl delete`.
    # Watches: ask the server to end each watch after 5 minutes and give up on a silent
    # connection a little later, so a half-dead connection cannot stall the operator.
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.watching.connect_timeout = 30
    config.networking.request_timeout = 60
    # Our own Events tell the job's story; kopf's per-handler Events would only add noise.
    config.posting.level = logging.WARNING
    config.posting.reporting_component = "finetune-operator"
    # One active replica: with --peering NAME, replicas pause while a peer with a higher
    # priority is alive (needs kopf's KopfPeering CRD); without it the chart runs one
    # replica with the Recreate strategy, so two never act at once.
    config.peering.standalone = peering is None
    if peering:
        config.peering.name = peering
        config.peering.clusterwide = True
    return config


async def resync_forever(context: Context, namespaces: Collection[str]) -> None:
    """Watches are edge-triggered: re-read every unfinished job now and then, as a safety net."""
    while True:
        await asyncio.sleep(context.settings.resync_seconds)
        try:
            await resync_once(context, namespaces)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.warning("resync failed: %s", error)
        except Exception:
            # The safety net must outlive any one bad object: log it loudly and go on.
            logger.exception("resync failed unexpectedly")


async def resync_once(context: Context, namespaces: Collection[str]) -> None:
    collections = [
        object_path(api.GROUP, api.VERSION, api.PLURAL, namespace) for namespace in namespaces
    ] or [object_path(api.GROUP, api.VERSION, api.PLURAL)]
    limit = asyncio.Semaphore(8)

    async def one(item: dict[str, Any]) -> None:
        metadata = item.get("metadata") or {}
        phase = current_phase(item.get("status"))
        has_ttl = (item.get("spec") or {}).get("runPolicy", {}).get("ttlSecondsAfterFinished")
        if phase is not None and phase.is_terminal() and has_ttl is None:
            return
        async with limit:
            await reconcile_quietly(
                context, metadata.get("namespace") or "default", metadata["name"]
            )

    listed: set[tuple[str, str]] = set()
    for collection in collections:
        listing = await context.client.request("GET", collection) or {}
        items = listing.get("items") or []
        listed.update(
            ((item.get("metadata") or {}).get("namespace") or "default", item["metadata"]["name"])
            for item in items
        )
        await asyncio.gather(*(one(item) for item in items))
    # A job deleted while no watch event reached us: its head must not be read forever.
    for key in set(context.progress.watches) - listed:
        if not namespaces or key[0] in namespaces:
            context.forget(*key)


def warm_up_validation() -> None:
    """Compile the CRD's CEL rules once, so the first job is not a second slower."""
    parse_job(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "warm-up"},
            "spec": {
                "model": {"source": "hf://org/model"},
                "dataset": {"train": {"source": "s3://bucket/train.jsonl"}},
                "output": {"destination": "s3://bucket/out"},
            },
        }
    )


async def run_operator(
    settings: Settings,
    login: Login,
    *,
    namespaces: Collection[str] = (),
    liveness_endpoint: str | None = None,
    peering: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """The whole operator until stopped: kopf's handlers and the resync loop."""
    await asyncio.to_thread(warm_up_validation)
    context = Context(settings=settings, client=KubeClient(login))
    registry = build_registry(context, login)
    resync = asyncio.create_task(resync_forever(context, namespaces))
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(settings, peering=peering),
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=peering is None,
            peering_name=peering,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        resync.cancel()
        for handle in context.wakeups.values():
            handle.cancel()
        await context.progress.close()
        await context.client.close()
