"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping given targets.

Its own free port, config and storage in a temporary folder, a one-second scrape interval;
queried through its HTTP API as Grafana queries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.operator.operator_cluster import free_port, stop_process

SCRAPE_SECONDS = 1


def require(program: str) -> str:
    """The program's path; the test skips, naming it, where it is not installed."""
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"`{program}` is not installed (Debian: apt-get install prometheus)")
    return path


@contextlib.asynccontextmanager
async def prometheus_scraping(folder: Path, targets: list[str]) -> AsyncIterator[PrometheusServer]:
    """A started PrometheusServer, stopped afterwards (started off the event loop, which
    may be serving the API the scraped operator needs meanwhile)."""
    server = PrometheusServer(folder, targets)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


class PrometheusServer:
    """`prometheus` scraping `targets` (host:port) every second until stopped."""

    def __init__(self, folder: Path, targets: list[str]) -> None:
        self.binary = require("prometheus")
        self.folder = folder
        self.targets = targets
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_SECONDS}s",
            },
            "scrape_configs": [
                {
                    "job_name": "finetune-operator",
                    # Our series carry their own `namespace` and `job` labels (the FineTuneJob's);
                    # without this Prometheus would rename them exported_namespace/exported_job.
                    "honor_labels": True,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        config_file = self.folder / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        command = [
            self.binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self._ready():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        # Every target scraped once before the test goes on, as by a Prometheus that was
        # there first: a rate needs the counters' zeros from before the events it counts.
        while len(self.query("up == 1")) < len(self.targets):
            assert time.monotonic() < deadline, "prometheus did not scrape every target"
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str | list[str]) -> Any:
        """One HTTP API call; its `data` (the call must succeed)."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params: dict[str, str | list[str]] = {"match[]": [selector]} if selector else {}
        values: list[str] = self.api(f"label/{label}/values", **params)
        return values

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
