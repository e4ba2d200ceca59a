"""A stand-in for KubeRay v1.7: runs each RayJob's entrypoint on this machine.

    python -m tests.e2e.kuberay_standin --kubeconfig FILE --workdir DIR

Runs until SIGTERM (or SIGINT). Every `--interval` seconds it reads the RayJobs through
the API, moves each one step through KubeRay's state machine (`rayjob_states.py`), starts
or stops its attempt (`standin_attempts.py`) with the head pod made from the RayJob alone
(`standin_pods.py`), and writes the status as KubeRay does. It also plays the garbage
collector for ownerReferences, which kmock lacks: a RayJob or ConfigMap whose owner is
gone (or was re-created with another uid) is deleted, and a deleted RayJob's attempt stops.

It polls instead of watching: kmock replays every object when a watch starts, and a list
every fraction of a second is what a KubeRay requeue loop amounts to for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import secrets
import signal
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml
from finetune_operator.kube import ApiError, KubeClient, object_path

from tests.e2e import rayjob_states
from tests.e2e.standin_attempts import Attempt
from tests.e2e.standin_pods import PodNotReady, make_head_pod

logger = logging.getLogger("kuberay-standin")

RAYJOBS = ("ray.io", "v1", "rayjobs")
# Dependents the operator creates; the garbage collector looks at these.
DEPENDENTS = (RAYJOBS, ("", "v1", "configmaps"))


def login_from(kubeconfig: Path) -> kopf.ConnectionInfo:
    """The current context's server and token (what kmock needs; no client certificates)."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(
        (u["user"] for u in config.get("users", []) if u["name"] == context.get("user")), {}
    )
    return kopf.ConnectionInfo(server=cluster["server"], token=user.get("token"))


def key_of(rayjob: Mapping[str, Any]) -> tuple[str, str, str]:
    """A RayJob's identity: namespace, name and uid (the owner's when kmock gave it none),
    so a RayJob re-created under the same name is a new one."""
    metadata = rayjob["metadata"]
    owners = metadata.get("ownerReferences") or [{}]
    uid = metadata.get("uid") or owners[0].get("uid") or ""
    return metadata.get("namespace") or "default", metadata["name"], uid


def random_suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


@dataclasses.dataclass
class Tracked:
    """What the stand-in keeps about one RayJob between passes."""

    attempts: int = 0
    attempt: Attempt | None = None


class StandIn:
    def __init__(self, client: KubeClient, workdir: Path, *, teardown_seconds: float) -> None:
        self.client, self.workdir = client, workdir
        self.teardown_seconds = teardown_seconds
        self.tracked: dict[tuple[str, str, str], Tracked] = {}
        self.kinds: dict[tuple[str, str], str] = {}  # (apiVersion, kind) -> plural

    async def tick(self) -> None:
        await self.collect_garbage()
        listing = await self.client.get(object_path(*RAYJOBS)) or {}
        rayjobs = [
            r for r in listing.get("items") or [] if not r["metadata"].get("deletionTimestamp")
        ]
        present = {key_of(r) for r in rayjobs}
        for key in [k for k in self.tracked if k not in present]:
            logger.info("RayJob %s/%s is gone: stopping its attempt", key[0], key[1])
            await self.stop(self.tracked.pop(key))
        for rayjob in rayjobs:
            await self.reconcile(rayjob)

    async def reconcile(self, rayjob: Mapping[str, Any]) -> None:
        key = key_of(rayjob)
        tracked = self.tracked.setdefault(key, Tracked())
        info = tracked.attempt.info() if tracked.attempt else None
        now = datetime.datetime.now(datetime.UTC)
        status = rayjob.get("status") or {}
        step = rayjob_states.reconcile(
            key[1], rayjob["spec"], status, info, now, suffix=random_suffix()
        )
        if step.stop and tracked.attempt is not None:
            await self.stop(tracked)
            if step.status.get("jobDeploymentStatus") in ("", "Suspended"):
                # Pods take their grace period to go: KubeRay waits for them (requeues).
                await asyncio.sleep(self.teardown_seconds)
        if step.start:
            try:
                pod = await make_head_pod(self.client, rayjob, self.workdir)
            except PodNotReady as waiting:
                logger.info("%s/%s: head pod not ready: %s", key[0], key[1], waiting)
                return  # stays Initializing, as with a pod in ContainerCreating
            tracked.attempts += 1
            mark = f"{key[0]}.{key[1]}.{key[2][:8]}.{tracked.attempts}"
            tracked.attempt = Attempt(pod, tracked.attempts, mark)
            logger.info(
                "%s/%s: attempt %d started: %s", key[0], key[1], tracked.attempts, pod.command
            )
        if step.write:
            logger.info(
                "%s/%s: %s/%s -> %s/%s", key[0], key[1], status.get("jobDeploymentStatus") or "New",
                status.get("jobStatus") or "-", step.status.get("jobDeploymentStatus") or "New",
                step.status.get("jobStatus") or "-",
            )  # fmt: skip
            await self.write_status(rayjob, status, step.status)

    async def stop(self, tracked: Tracked) -> None:
        attempt, tracked.attempt = tracked.attempt, None
        if attempt is not None:
            await asyncio.to_thread(attempt.stop)

    async def write_status(
        self, rayjob: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        patch = {k: new.get(k) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        namespace, name = (
            rayjob["metadata"].get("namespace") or "default",
            rayjob["metadata"]["name"],
        )
        path = object_path(*RAYJOBS, namespace, name, "status")
        try:
            await self.client.merge_patch(path, {"status": patch})
        except ApiError as error:
            if error.status != 404:  # deleted meanwhile: the next pass stops its attempt
                raise

    async def collect_garbage(self) -> None:
        """Delete dependents whose controlling owner no longer exists with that uid."""
        for group, version, plural in DEPENDENTS:
            listing = await self.client.get(object_path(group, version, plural)) or {}
            for item in listing.get("items") or []:
                metadata = item["metadata"]
                for owner in metadata.get("ownerReferences") or []:
                    if await self.owner_exists(owner, metadata.get("namespace")):
                        continue
                    logger.info("garbage: %s %s/%s (owner %s %s is gone)", plural,
                                metadata.get("namespace"), metadata["name"], owner["kind"],
                                owner["name"])  # fmt: skip
                    path = object_path(
                        group, version, plural, metadata.get("namespace"), metadata["name"]
                    )
                    await self.client.delete(path)
                    break

    async def owner_exists(self, owner: Mapping[str, Any], namespace: str | None) -> bool:
        group, _, version = owner["apiVersion"].rpartition("/")
        plural = await self.plural(owner["apiVersion"], owner["kind"])
        if plural is None:
            return True  # an owner kind the server does not serve: leave the dependent alone
        found = await self.client.get(object_path(group, version, plural, namespace, owner["name"]))
        return found is not None and (found["metadata"].get("uid") or "") == owner.get("uid", "")

    async def plural(self, api_version: str, kind: str) -> str | None:
        """Discovery, as the garbage collector's REST mapper does it."""
        if (api_version, kind) not in self.kinds:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            listing = await self.client.get(path) or {}
            for resource in listing.get("resources") or []:
                if "/" not in resource["name"]:
                    self.kinds[api_version, resource["kind"]] = resource["name"]
        return self.kinds.get((api_version, kind))

    async def shutdown(self) -> None:
        for tracked in self.tracked.values():
            await self.stop(tracked)


async def serve(kubeconfig: Path, workdir: Path, *, interval: float, teardown: float) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # KubeRay's own identity: its requests are not the operator's (the RBAC check counts
    # only those).
    client = KubeClient(lambda: login_from(kubeconfig), timeout=10, user_agent="kuberay-standin")
    standin = StandIn(client, workdir, teardown_seconds=teardown)
    logger.info("watching RayJobs; work directory %s", workdir)
    try:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                await standin.tick()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
                logger.warning("pass failed, trying again: %s", error)
            pause = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
    finally:
        await standin.shutdown()
        await client.close()
    logger.info("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.kuberay_standin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between passes")
    parser.add_argument("--teardown-seconds", type=float, default=2.0,
                        help="how long deleting a cluster takes (Retrying/Suspending are seen that long)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(
        serve(
            args.kubeconfig,
            args.workdir.resolve(),
            interval=args.interval,
            teardown=args.teardown_seconds,
        )
    )


if __name__ == "__main__":
    main()
