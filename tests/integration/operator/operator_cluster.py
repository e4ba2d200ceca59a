"""The operator against kmock's Kubernetes emulator, with the real CRDs loaded.

(Imported by the tests under this name; conftest.py only turns it into fixtures.)

kmock's known limits are handled here, not in the operator: it needs `v1/namespaces` among
its resources before kopf watches anything, assigns no uid or generation (the fixtures set
them, as the API server would), has no garbage collector and evaluates no CEL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml
from finetune_operator.runner import run_operator
from finetune_operator.settings import Settings

from tests.factories import SHARED

ROOT = Path(__file__).parents[3]
FINETUNE_CRD = ROOT / "crds" / "finetune.io_finetunejobs.yaml"
RAYJOB_CRD = SHARED / "fixtures" / "kuberay-v1.7.0" / "ray.io_rayjobs.yaml"

FINETUNEJOBS = "finetune.io/v1alpha1/finetunejobs"
RAYJOBS = "ray.io/v1/rayjobs"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
NAMESPACE = "default"

# Short enough for a fast suite, long enough not to flood the emulator.
TEST_SETTINGS = Settings(
    trainer_image="registry.local/trainer:test",
    resync_seconds=2.0,
    kuberay_retry_seconds=0.5,
    retry_seconds=0.3,
)


def load_crd(path: Path) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


class Cluster:
    """The emulator plus the few verbs the tests need, all through its HTTP API."""

    def __init__(self, emulator: TallyingEmulator) -> None:
        self.emulator = emulator

    @property
    def url(self) -> str:
        return str(self.emulator.url).rstrip("/")

    def install_kuberay(self) -> None:
        """What `helm install kuberay-operator` does for us: serve ray.io/v1 rayjobs."""
        self.emulator.resources[RAYJOBS] = kmock.ResourceInfo(
            kind="RayJob", namespaced=True, subresources={"status"}, verbs={"list", "watch"}
        )

    async def install_kuberay_crd(self) -> None:
        """Install KubeRay's CRD object too, which tells kopf's scanner to look again."""
        self.install_kuberay()
        await self.send("POST", f"/apis/{CRDS}", load_crd(RAYJOB_CRD))

    async def send(self, method: str, path: str, body: Any = None) -> Any:
        async with self.emulator.request(method, path, json=body) as response:
            payload = await response.json(content_type=None)
            assert response.status < 400, f"{method} {path}: {response.status} {payload}"
            return payload

    async def apply_job(self, job: dict[str, Any]) -> dict[str, Any]:
        namespace = job["metadata"].get("namespace") or NAMESPACE
        path = f"/apis/finetune.io/v1alpha1/namespaces/{namespace}/finetunejobs"
        return await self.send("POST", path, job)  # type: ignore[no-any-return]

    def add_namespace(self, name: str) -> None:
        """Stored directly: kmock cannot parse a POST to the cluster-wide namespaces path."""
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.emulator.objects["v1/namespaces", None, name] = namespace

    async def patch_job_spec(self, name: str, spec: dict[str, Any]) -> None:
        job = self.get(FINETUNEJOBS, name)
        assert job is not None
        generation = int(job["metadata"].get("generation") or 1) + 1
        path = f"/apis/finetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/{name}"
        await self.send("PATCH", path, {"metadata": {"generation": generation}, "spec": spec})

    async def set_rayjob_status(self, name: str, **status: Any) -> None:
        """Play KubeRay: write a RayJob status as its controller would."""
        path = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs/{name}/status"
        await self.send("PATCH", path, {"status": status})

    def get(self, resource: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return copy.deepcopy(self.emulator.objects[key].raw)

    def names(self, resource: str) -> list[str]:
        found = []
        for (res, _, name), obj in self.emulator.objects.items():
            if res == kmock.resource(resource) and not obj.deleted:
                found.append(name)
        return sorted(found)

    def creations(self, resource: str) -> int:
        """How many POSTs the emulator saw for a resource (successful or not)."""
        return self.requests("POST", f"/{resource.split('/')[-1]}")

    def requests(self, method: str, path_suffix: str) -> int:
        """How many requests with this method the emulator saw on paths ending so."""
        tally = self.emulator.__dict__.get("tally", {})
        return sum(
            count
            for (verb, path), count in tally.items()
            if verb == method and path.endswith(path_suffix)
        )

    def status(self, name: str) -> dict[str, Any]:
        job = self.get(FINETUNEJOBS, name) or {}
        return job.get("status") or {}

    def events(self, name: str) -> list[dict[str, Any]]:
        events = []
        for (res, _, _), obj in self.emulator.objects.items():
            if res == kmock.resource("v1/events") and not obj.deleted:
                event = obj.raw
                if event.get("involvedObject", {}).get("name") == name:
                    events.append(event)
        return sorted(events, key=lambda e: e["metadata"]["name"])


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "", interval: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


@dataclasses.dataclass(frozen=True)
class OperatorRequest:
    """One API request the operator made, and which namespaces that operator watched."""

    method: str
    path_and_query: str
    watched: tuple[str, ...]  # () = all namespaces
    peering: str | None = None  # the kopf peering it joined (--peering NAME)


# Every API request any operator made in this test session, for the RBAC coverage check
# (tests/integration/operator/test_rbac_coverage.py runs last and reads it).
OPERATOR_REQUESTS: list[OperatorRequest] = []
# The User-Agents of the operator's two clients: kopf's and our KubeClient's. The tests' own
# requests (playing the user or KubeRay) carry neither.
OPERATOR_AGENTS = ("kopf/", "finetune-operator/")


class TallyingEmulator(kmock.KubernetesEmulator):
    """kmock that tallies requests by method and path and keeps a short request log.

    kmock matches every request against its whole request log, which makes a burst of
    thousands of requests quadratic; the tally answers "how many creates" instead.
    Once an operator runs against it (its start sets `watched`, the namespaces it watches),
    it also records the operator's requests in OPERATOR_REQUESTS.
    """

    KEEP = 4

    async def __call__(self, raw_request: Any) -> Any:
        tally: collections.Counter[tuple[str, str]] = self.__dict__.setdefault(
            "tally", collections.Counter()
        )
        tally[raw_request.method, raw_request.path] += 1
        # Only where an operator runs (its start sets `watched`): the client's own tests
        # send arbitrary requests with the operator's User-Agent.
        watched = self.__dict__.get("watched")
        agent = raw_request.headers.get("User-Agent", "")
        if watched is not None and agent.startswith(OPERATOR_AGENTS):
            peering = self.__dict__.get("peering")
            OPERATOR_REQUESTS.append(
                OperatorRequest(raw_request.method, raw_request.path_qs, watched, peering)
            )
        if len(self._requests) > 4 * self.KEEP:
            del self._requests[: -self.KEEP]
        return await super().__call__(raw_request)


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Cluster]:
    """kmock serving the resources the operator uses, with our CRD object loaded."""
    async with TallyingEmulator() as emulator, kmock.Server(emulator):
        emulator.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False)
        emulator.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
        emulator.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
        emulator.resources[CRDS] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False
        )
        emulator.resources[FINETUNEJOBS] = kmock.ResourceInfo(
            kind="FineTuneJob",
            namespaced=True,
            subresources={"status"},
            shortnames={"ftj"},
            verbs={"list", "watch", "get", "patch"},
        )
        emulator.objects["v1/namespaces", None, NAMESPACE] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE},
        }
        crd = load_crd(FINETUNE_CRD)
        emulator.objects[CRDS, None, crd["metadata"]["name"]] = crd
        yield Cluster(emulator)


class RunningOperator:
    """The real operator (run_operator, as `finetune-operator` runs it) in a background thread.

    A thread with its own event loop, as in production: kopf cancels every task it did not
    start when it stops, which must not include the test's own.
    """

    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        namespaces: tuple[str, ...] = (),
        peering: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.namespaces = namespaces
        self.peering = peering
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()

    async def start(self) -> None:
        self.stop_flag = threading.Event()
        ready = threading.Event()
        url = self.cluster.url
        self.cluster.emulator.__dict__["watched"] = tuple(self.namespaces)
        self.cluster.emulator.__dict__["peering"] = self.peering

        def login() -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, default_namespace=NAMESPACE)

        operator = run_operator(
            self.settings,
            login,
            namespaces=self.namespaces,
            peering=self.peering,
            stop_flag=self.stop_flag,
            ready_flag=ready,
        )
        self.thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start"

    async def stop(self) -> None:
        """Stop as on SIGTERM: kopf finishes what it is doing and exits."""
        if self.thread is not None:
            self.stop_flag.set()
            await asyncio.to_thread(self.thread.join, 15)
            assert not self.thread.is_alive(), "the operator did not stop"
            self.thread = None


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, as on a pod's shutdown; SIGKILL when it does not end in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    """`finetune-operator` as a separate process, so that a test can kill it outright."""

    def __init__(
        self,
        cluster: Cluster,
        folder: Path,
        *,
        metrics_port: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.metrics_port = metrics_port  # 0: no metrics server
        self.extra_env = env or {}  # applied last: e.g. another FINETUNE_RESYNC_SECONDS
        self.kubeconfig = folder / "kubeconfig"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "operator.log"
        self.health_port = 0  # chosen at start

    async def start(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.cluster.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.cluster.emulator.__dict__["watched"] = ()  # no --namespace: all of them
        port = self.health_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "FINETUNE_RESYNC_SECONDS": str(TEST_SETTINGS.resync_seconds),
            "FINETUNE_KUBERAY_RETRY_SECONDS": str(TEST_SETTINGS.kuberay_retry_seconds),
            **self.extra_env,
        }
        command = [sys.executable, "-m", "finetune_operator.main", "--health-port", str(port)]
        command += ["--metrics-port", str(self.metrics_port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        await eventually(lambda: self._healthy(port), timeout=30, what="the operator's probe")

    def _healthy(self, port: int) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no handler finishes, nothing is cleaned up, as when a node dies."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def terminate(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
