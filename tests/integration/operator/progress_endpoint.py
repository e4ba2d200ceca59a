"""A stand-in for the driver's GET /progress on a Ray head: an aiohttp server on one loopback
address that the test steers (the body, a status code, a delay) and that counts its reads.

Each job of a test gets its own loopback address (127.0.0.2, 127.0.0.3, ...) on the one port
the operator's settings name, as each job's head service has its own host in a cluster.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.integration.operator.operator_cluster import free_port


def contract_body(
    step: int,
    total: int = 4000,
    *,
    loss: float = 1.4213,
    eta: float | None = 7500.0,
    checkpoint: int | None = None,
    result: dict[str, Any] | None = None,
    **progress: Any,
) -> dict[str, Any]:
    """A body as the trainer writes it (design §5, "Progress contract")."""
    return {
        "progress": {
            "step": step, "totalSteps": total, "percent": round(100 * step / total, 2),
            "epoch": step / 1000, "trainLoss": loss, "tokensPerSecond": 5120.0,
            "etaSeconds": eta, **progress,
        },
        "lastCheckpoint": (
            None if checkpoint is None else {"step": checkpoint, "uri": f"s3://out/ckpt/{checkpoint}"}
        ),
        "result": result,
    }  # fmt: skip


def shared_port() -> int:
    """A port free on 127.0.0.1, for every job's endpoint of one test (on its own address)."""
    return free_port()


class ProgressEndpoint:
    """GET /progress on HOST:PORT answering whatever the test set last."""

    def __init__(self, host: str, port: int, body: Any = None) -> None:
        self.host, self.port = host, port
        self.body: Any = body if body is not None else contract_body(0)
        self.status = 200
        self.delay = 0.0
        self.reads = 0
        self.result_served = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def dashboard_url(self) -> str:
        """What KubeRay would put in the RayJob's status.dashboardURL for this head."""
        return f"{self.host}:8265"

    async def start(self) -> ProgressEndpoint:
        app = web.Application()
        app.router.add_get("/progress", self._progress)
        # A torn-down head answers nothing more: no grace for reads under way.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        """The head is gone: the cluster was torn down."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _progress(self, _: web.Request) -> web.Response:
        self.reads += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = self.body
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = web.Response(body=raw, status=self.status, content_type="application/json")
        if isinstance(body, dict) and body.get("result"):
            self.result_served.set()
        return response
