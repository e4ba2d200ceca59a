"""Per-operator state shared by every reconcile: settings, the API client, bookkeeping."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import OrderedDict
from typing import Any

from finetune_operator import api
from finetune_operator.kube import KubeClient
from finetune_operator.progress_poll import ProgressPoller
from finetune_operator.settings import Settings
from finetune_operator.validation import InvalidSpec, parse_job


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
    # The running jobs' /progress reads (background tasks, one per job).
    progress: ProgressPoller = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.progress = ProgressPoller(self.settings)

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
        self.progress.stop((namespace, name))

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    async def kuberay_served(self) -> bool:
        """Whether ray.io/v1 rayjobs is served; a positive answer is trusted for a minute."""
        loop = asyncio.get_running_loop()
        if self.kuberay_seen_at is not None and loop.time() - self.kuberay_seen_at < 60:
            return True
        if await self.client.serves("ray.io", "v1", "rayjobs"):
            self.kuberay_seen_at = loop.time()
            return True
        return False
