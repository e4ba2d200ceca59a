"""The end-to-end bed: kmock with the real CRDs, the real `finetune-operator` process, the
KubeRay stand-in process, and the trainer it runs on a local Ray.

(Imported by the tests under this name; conftest.py only turns it into fixtures.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
from finetune_operator import naming

from tests.e2e.standin_attempts import ATTEMPT_FILE, marked_processes
from tests.e2e.standin_pods import claim_folder
from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    NAMESPACE,
    ROOT,
    Cluster,
    OperatorProcess,
    emulated_cluster,
    eventually,
    free_port,
)

QUICKSTART_DATA = ROOT / "examples" / "quickstart" / "data" / "train.jsonl"

# The quickstart job, made short: one CPU worker, 12 steps, a checkpoint every 3 steps
# (so a killed attempt loses at most 3), evaluation twice.
E2E_SPEC: dict[str, Any] = {
    "model": {"source": "pvc://data/model"},
    "dataset": {
        "train": {"source": "pvc://data/train.jsonl", "format": "messages"},
        "validationSplit": 0.1,
        "testSplit": 0.05,
        "maxSeqLength": 256,
    },
    "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
    "hyperparameters": {
        "maxSteps": 12,
        "learningRate": 5.0e-3,
        "warmupRatio": 0.0,
        "batchSize": 8,
        "gradientCheckpointing": False,
        "precision": "fp32",
    },
    "evaluation": {"everySteps": 6, "metrics": ["loss", "perplexity"]},
    "deepspeed": {"zeroStage": 2},
    "resources": {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1, "memoryPerWorker": "4Gi"},
    "checkpointing": {"everySteps": 3, "keep": 2},
}
PHASE_TIMEOUT = 300.0
PHASES = (
    "Pending",
    "Initializing",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
)  # one training attempt on 2 shared cores, Ray start included


class StandInProcess:
    """`python -m tests.e2e.kuberay_standin` as its contract runs it, until SIGTERM."""

    def __init__(self, kubeconfig: Path, workdir: Path, log: Path) -> None:
        self.kubeconfig, self.workdir, self.log = kubeconfig, workdir, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "tests.e2e.kuberay_standin"]
        command += ["--kubeconfig", str(self.kubeconfig), "--workdir", str(self.workdir)]
        # Its environment is the trainer image's: `finetune` on the PATH, as in the image.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class EndToEnd:
    """One test's bed and the questions its tests ask of it."""

    def __init__(self, cluster: Cluster, folder: Path, model_dir: Path) -> None:
        self.cluster, self.folder = cluster, folder
        self.workdir = folder / "kuberay"
        self.progress_port = free_port()
        self.metrics_port = free_port()
        self.operator = OperatorProcess(
            cluster,
            folder,
            metrics_port=self.metrics_port,
            env={
                # Never the fixed 8266: other suites may run beside this one.
                "FINETUNE_PROGRESS_PORT": str(self.progress_port),
                # A run here lasts about a minute: read and write progress often enough to see it move.
                "FINETUNE_PROGRESS_POLL_SECONDS": "1",
                "FINETUNE_PROGRESS_WRITE_SECONDS": "2",
            },
        )
        self.standin = StandInProcess(folder / "kubeconfig", self.workdir, folder / "standin.log")
        data = self.claim("data")
        data.mkdir(parents=True)
        (data / "train.jsonl").write_bytes(QUICKSTART_DATA.read_bytes())
        (data / "model").symlink_to(model_dir, target_is_directory=True)

    async def start(self) -> None:
        await self.operator.start()  # writes the kubeconfig the stand-in reads too
        self.standin.start()

    async def stop(self) -> None:
        self.operator.terminate()
        code = await asyncio.to_thread(self.standin.terminate)
        assert code == 0, f"the stand-in exited with {code}:\n{self.standin_log()}"

    # --- what a test sets up ---

    def claim(self, name: str) -> Path:
        return claim_folder(self.workdir, NAMESPACE, name)

    def job(self, name: str) -> MakeJob:
        job = MakeJob(name).uid()
        job._job["spec"] = json.loads(json.dumps(E2E_SPEC))
        return job.output(f"pvc://outputs/{name}")

    async def apply(self, job: MakeJob) -> dict[str, Any]:
        return await self.cluster.apply_job(job.obj())

    async def patch_run_policy(self, name: str, **policy: Any) -> None:
        path = f"/apis/finetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/{name}"
        await self.cluster.send("PATCH", path, {"spec": {"runPolicy": policy}})

    async def delete(self, name: str) -> None:
        path = f"/apis/finetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/{name}"
        await self.cluster.send("DELETE", path)

    # --- what a test looks at ---

    def output(self, name: str) -> Path:
        return self.claim("outputs") / name

    def rayjob_folder(self, name: str) -> Path:
        return self.workdir / NAMESPACE / naming.rayjob_name(name)

    def attempt(self, name: str) -> dict[str, Any] | None:
        """The stand-in's record of the attempt running now (number, driver pid, mark)."""
        try:
            record: dict[str, Any] = json.loads(
                (self.rayjob_folder(name) / ATTEMPT_FILE).read_text()
            )
        except (OSError, ValueError):
            return None
        return record

    def attempt_logs(self, name: str) -> str:
        logs = sorted(self.rayjob_folder(name).glob("attempt-*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)

    def standin_log(self) -> str:
        return (
            self.standin.log.read_text(errors="replace")[-6000:]
            if self.standin.log.exists()
            else ""
        )

    def phase(self, name: str) -> str | None:
        return self.cluster.status(name).get("phase")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The job's Events in the order they were created (their times have 1 s steps)."""
        kind = kmock.resource("v1/events")
        items = self.cluster.emulator.objects.items()
        found = [obj.raw for (res, _, _), obj in items if res == kind and not obj.deleted]
        return [e for e in found if e.get("involvedObject", {}).get("name") == name]

    def phases(self, name: str) -> list[str]:
        """The phases the operator announced, in order (one Event per phase change)."""
        said = [e["message"].split(":", 1)[0] for e in self.events(name)]
        return [phase for phase in said if phase in PHASES]

    def checkpoints(self, name: str) -> list[int]:
        """Steps of the checkpoints Ray Train has recorded for the job's run: the ones a new
        attempt can resume from (its controller records a reported checkpoint in its
        snapshot within RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s, of the report)."""
        steps = []
        for snapshot in (self.output(name) / "checkpoints").glob(
            "*/checkpoint_manager_snapshot.json"
        ):
            with contextlib.suppress(OSError, ValueError):  # being rewritten this instant
                results = json.loads(snapshot.read_text())["checkpoint_results"]
                steps += [int(r["checkpoint_dir_name"].rsplit("_", 1)[1]) for r in results]
        return sorted(steps)

    def history_steps(self, name: str) -> list[int]:
        path = self.output(name) / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]

    def metrics(self, name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.output(name) / "metrics.json").read_text())
        return loaded

    async def wait_phase(
        self, name: str, phase: str, timeout: float = PHASE_TIMEOUT
    ) -> dict[str, Any]:
        def reached() -> bool:
            assert self.standin.alive(), f"the stand-in died:\n{self.standin_log()}"
            current = self.phase(name)
            if current == "Failed" and phase != "Failed":
                raise AssertionError(
                    f"{name} failed: {self.cluster.status(name)}\n{self.attempt_logs(name)}"
                )
            # The pass posts its Events after its status write: wait for the phase's too.
            return current == phase and self.phases(name)[-1:] == [phase]

        try:
            await eventually(reached, timeout=timeout, what=f"{name} {phase}", interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.cluster.status(name)}\n"
                                 f"{self.attempt_logs(name)}\n{self.standin_log()}") from None  # fmt: skip
        return self.cluster.status(name)

    async def wait_checkpoint(self, name: str, timeout: float = PHASE_TIMEOUT) -> int:
        """The newest recorded checkpoint's step, once there is one."""
        steps = await eventually(lambda: self.checkpoints(name), timeout=timeout,
                                 what=f"a checkpoint of {name}", interval=0.2)  # fmt: skip
        return int(steps[-1])

    def processes_of(self, mark: str) -> list[int]:
        return marked_processes(mark)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def operator_log(self) -> str:
        return self.operator.log.read_text(errors="replace")


def driver_pid(record: dict[str, Any]) -> int:
    """The `finetune run` process of an attempt: the entrypoint's shell runs it as a child
    (as Ray's job supervisor does; dash does not exec a lone command), or is it."""
    shell = int(record["pid"])
    for pid in marked_processes(record["mark"]):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == shell:  # field 4: the parent's pid
                return pid
    return shell


def kill_driver(record: dict[str, Any]) -> int:
    """SIGKILL the attempt's driver alone, as an OOM killer would; its pid."""
    pid = driver_pid(record)
    os.kill(pid, signal.SIGKILL)
    return pid


@contextlib.asynccontextmanager
async def end_to_end(folder: Path, model_dir: Path) -> AsyncIterator[EndToEnd]:
    """kmock (with Secrets and KubeRay's CRD), the operator and the stand-in, started."""
    async with emulated_cluster() as cluster:
        cluster.emulator.resources["v1/secrets"] = kmock.ResourceInfo(
            kind="Secret", namespaced=True
        )
        await cluster.install_kuberay_crd()
        bed = EndToEnd(cluster, folder, model_dir)
        await bed.start()
        try:
            yield bed
        finally:
            await bed.stop()
