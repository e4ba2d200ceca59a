"""What following 1,000 running jobs' /progress costs the operator.

The operator's own code path (reconcile passes, the background reads, the write throttle,
the wake-ups they ask for) runs in this process against an in-memory API (tests' FakeKube:
kmock's emulator cannot carry 1,000 jobs' writes on this machine, and would be measured
instead of the operator). Every job's head is a loopback address (127.0.x.y) on one port,
answered by a stand-in in a child process with a step that moves every second, so every
read is news and only the throttle bounds status writes. Two windows with the same jobs
Running, resynced every 30 s as the operator does: without dashboardURL (no reads: the
baseline), then with it. Prints reads/s, status writes/s (and per job per write window),
and this process's CPU and RSS in each.

Usage: python bench/progress_polling.py [--jobs 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune_operator.builders import build_configmap, build_rayjob  # noqa: E402
from finetune_operator.children import configmap_path, job_path, rayjob_path  # noqa: E402
from finetune_operator.context import Context  # noqa: E402
from finetune_operator.reconcile import reconcile_quietly  # noqa: E402
from finetune_operator.settings import Settings  # noqa: E402
from finetune_operator.validation import parse_job  # noqa: E402

from tests.factories import MakeJob  # noqa: E402
from tests.integration.operator.operator_cluster import free_port  # noqa: E402
from tests.unit.operator.fake_kube import FakeKube  # noqa: E402

NAMESPACE = "bench"
SETTINGS = Settings(trainer_image="registry.local/trainer:bench")


def head_address(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def serve_heads(port: int, reads: Any) -> None:
    """Every job's /progress on 0.0.0.0:port (runs in the child process)."""
    started = time.monotonic()

    async def progress(_: web.Request) -> web.Response:
        with reads.get_lock():
            reads.value += 1
        step = int(time.monotonic() - started) + 1
        body = {
            "progress": {"step": step, "totalSteps": 100_000, "trainLoss": 2.0 - step / 1e5,
                         "tokensPerSecond": 5000.0, "etaSeconds": float(100_000 - step)},
            "lastCheckpoint": {"step": step - step % 50, "uri": f"s3://out/ckpt/{step // 50}"},
            "result": None,
        }  # fmt: skip
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/progress", progress)
    web.run_app(app, host="0.0.0.0", port=port, access_log=None, print=None)


def seed(kube: FakeKube, jobs: int) -> list[str]:
    """`jobs` FineTuneJobs with their children, each RayJob Running (as after a restart)."""
    names = []
    for index in range(jobs):
        name = f"job-{index:04d}"
        manifest = MakeJob.operator(name, namespace=NAMESPACE).stored().obj()
        typed = parse_job(manifest)
        kube.put(job_path(NAMESPACE, name), manifest)
        configmap = build_configmap(typed)
        kube.put(configmap_path(NAMESPACE, configmap["metadata"]["name"]), configmap)
        rayjob = build_rayjob(typed, SETTINGS)
        rayjob["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                            "startTime": "2026-01-01T00:00:00Z"}  # fmt: skip
        kube.put(rayjob_path(NAMESPACE, rayjob["metadata"]["name"]), rayjob)
        names.append(name)
    return names


def status_writes(kube: FakeKube) -> int:
    return sum(1 for method, path, _ in kube.writes if method == "PATCH" and "/status" in path)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def resync(context: Context, names: list[str]) -> None:
    """What the operator's resync does every resync_seconds: a pass over every job."""
    limit = asyncio.Semaphore(8)

    async def one(name: str) -> None:
        async with limit:
            await reconcile_quietly(context, NAMESPACE, name)

    while True:
        await asyncio.gather(*(one(name) for name in names))
        await asyncio.sleep(context.settings.resync_seconds)


async def measure(kube: FakeKube, reads: Any, seconds: float, jobs: int) -> dict[str, float]:
    cpu, writes, read, started = (
        time.process_time(),
        status_writes(kube),
        reads.value,
        time.monotonic(),
    )
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    per_second = (status_writes(kube) - writes) / elapsed
    return {
        "reads/s": (reads.value - read) / elapsed,
        "status writes/s": per_second,
        "writes/job/write window": per_second * SETTINGS.progress_write_seconds / jobs,
        "operator CPU (% of a core)": 100 * (time.process_time() - cpu) / elapsed,
        "operator RSS (MiB)": rss_mib(),
    }  # fmt: skip


async def main(jobs: int, seconds: float) -> None:
    port = free_port()
    reads = multiprocessing.Value("q", 0)
    heads = multiprocessing.Process(target=serve_heads, args=(port, reads), daemon=True)
    heads.start()
    kube = FakeKube()
    names = seed(kube, jobs)
    settings = dataclasses.replace(SETTINGS, progress_port=port)
    context = Context(settings=settings, client=kube)  # type: ignore[arg-type]
    await asyncio.sleep(1.0)  # the heads' server starts
    resyncing = asyncio.create_task(resync(context, names))
    try:
        await asyncio.sleep(5)
        kube.writes.clear()
        baseline = await measure(kube, reads, seconds / 2, jobs)
        for index, name in enumerate(names):
            status = kube.objects[rayjob_path(NAMESPACE, name)]["status"]
            status["dashboardURL"] = f"{head_address(index)}:8265"
            await reconcile_quietly(context, NAMESPACE, name)  # as the RayJob's watch event would
        began = time.monotonic()
        while not all((kube.objects[job_path(NAMESPACE, n)].get("status") or {}).get("progress")
                      for n in names):  # fmt: skip
            await asyncio.sleep(0.5)
        print(f"progress on all {jobs} jobs {time.monotonic() - began:.1f}s after dashboardURL",
              flush=True)  # fmt: skip
        await asyncio.sleep(SETTINGS.progress_write_seconds)
        polled = await measure(kube, reads, seconds, jobs)
    finally:
        resyncing.cancel()
        await context.progress.close()
        heads.terminate()
    print(f"\n{jobs} running jobs, {seconds:.0f}s windows (poll every "
          f"{SETTINGS.progress_poll_seconds:.0f}s, write at most every "
          f"{SETTINGS.progress_write_seconds:.0f}s)")  # fmt: skip
    print(f"{'':28}{'no reads':>12}{'polled':>12}")
    for key in polled:
        print(f"{key:28}{baseline[key]:12.2f}{polled[key]:12.2f}")
    extra = 10 * (polled["operator CPU (% of a core)"] - baseline["operator CPU (% of a core)"])
    print(f"{'CPU ms per read (+ writes)':28}{'':>12}{extra / max(polled['reads/s'], 0.01):12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.seconds))
