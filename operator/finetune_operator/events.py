"""Kubernetes Events on a FineTuneJob (what `kubectl describe ftj` shows)."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp

from finetune_operator import timeutil
from finetune_operator.actions import Event
from finetune_operator.kube import ApiError, KubeClient, object_path

COMPONENT = "finetune-operator"
logger = logging.getLogger(__name__)


def build_event(
    job: Mapping[str, Any], *, type_: str, reason: str, message: str, now: str, instance: str
) -> dict[str, Any]:
    metadata = job.get("metadata") or {}
    name, namespace = metadata.get("name", ""), metadata.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # A random suffix, not generateName, so the name is known before the server answers.
        "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": job.get("apiVersion"),
            "kind": job.get("kind"),
            "name": name,
            "namespace": namespace,
            "uid": metadata.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(client: KubeClient, job: Mapping[str, Any], event: Event) -> None:
    """Post an Event; a failure is logged, never fatal (Events are best effort in Kubernetes)."""
    body = build_event(
        job,
        type_=event.type_,
        reason=event.reason,
        message=event.message,
        now=timeutil.format_time(timeutil.now()),
        instance=socket.gethostname(),
    )
    path = object_path("", "v1", "events", body["metadata"]["namespace"])
    try:
        await client.create(path, body)
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        logger.warning("could not post the %s event %s: %s", event.type_, event.reason, error)
