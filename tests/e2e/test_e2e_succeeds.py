"""Scenarios 1 and 7: an applied FineTuneJob becomes a trained adapter, and the Secret it
names reaches the trainer and nothing else.

Both look at one run (module-scoped: a training run is the expensive part).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.e2e_cluster import EndToEnd, driver_pid, end_to_end
from tests.integration.operator.operator_cluster import NAMESPACE, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@dataclasses.dataclass
class Run:
    bed: EndToEnd
    canary: str
    status: dict[str, Any]
    driver_env: bytes  # the first attempt's driver environment, read while it ran
    progress: list[dict[str, Any]]  # every distinct status.progress seen while it ran


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def happy_run(
    quickstart_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    folder = tmp_path_factory.mktemp("happy")
    async with end_to_end(folder, quickstart_model) as bed:
        canary = f"hf_canary_{secrets.token_hex(12)}"
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf-token", "namespace": NAMESPACE},
            "data": {"HF_TOKEN": base64.b64encode(canary.encode()).decode()},
        }
        await bed.cluster.send("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
        await bed.apply(bed.job("happy").set("spec.model.secretRef", {"name": "hf-token"}))

        record = await eventually(lambda: bed.attempt("happy"), timeout=120, what="the attempt")
        driver = await eventually(
            lambda: driver_pid(record) != record["pid"] and driver_pid(record)
        )
        driver_env = Path(f"/proc/{driver}/environ").read_bytes()
        seen: list[dict[str, Any]] = []
        sampling = asyncio.create_task(sample_progress(bed, "happy", seen))
        try:
            status = await bed.wait_phase("happy", "Succeeded")
        finally:
            sampling.cancel()
        yield Run(bed, canary, status, driver_env, seen)


async def sample_progress(bed: EndToEnd, name: str, seen: list[dict[str, Any]]) -> None:
    while True:
        progress = bed.cluster.status(name).get("progress")
        if progress and (not seen or progress != seen[-1]):
            seen.append(progress)
        await asyncio.sleep(0.2)


async def test_applied_job_trains_an_adapter_that_loads(happy_run: Run) -> None:
    bed, status = happy_run.bed, happy_run.status

    assert bed.phases("happy") == ["Pending", "Initializing", "Running", "Succeeded"]
    assert status["attempts"] == 1
    assert status["reason"] == "Completed"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Running": "False",
        "Succeeded": "True",
        "Failed": "False",
        "Suspended": "False",
        "ProgressAvailable": "True",
    }
    steps = bed.history_steps("happy")
    assert steps == sorted(set(steps)) and steps[-1] == 12
    metrics = bed.metrics("happy")
    assert metrics["resumed_from_step"] == 0
    assert metrics["eval_loss"] < 6.0  # the untrained model's is about 6.3
    # Progress flowed back while it ran, and the result and last checkpoint stayed.
    steps_seen = [p["step"] for p in happy_run.progress if p.get("step") is not None]
    assert len(set(steps_seen)) >= 2 and steps_seen == sorted(steps_seen), happy_run.progress
    assert all(p["totalSteps"] == 12 for p in happy_run.progress if "totalSteps" in p)
    assert status["result"]["metrics"]["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert status["result"]["outputUri"] == "pvc://outputs/happy"
    # Where the serving manifests are, and they are there, on the claim the job wrote.
    assert status["result"]["servingUri"] == "pvc://outputs/happy/serving"
    served = (bed.claim("outputs") / "happy" / "serving" / "vllm.yaml").read_text()
    assert "happy=/mnt/pvc/outputs/happy/adapter" in served
    checkpoint = status["lastCheckpoint"]
    assert checkpoint["step"] == 12
    assert checkpoint["uri"].startswith("pvc://outputs/happy/checkpoints/happy-")
    assert checkpoint["uri"].endswith("/checkpoint_step_00000012")
    assert (bed.claim("outputs") / checkpoint["uri"].removeprefix("pvc://outputs/")).is_dir()
    rayjob = bed.cluster.get("ray.io/v1/rayjobs", "happy")
    assert rayjob is not None
    assert (rayjob["status"]["succeeded"], rayjob["status"]["failed"]) == (1, 0)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(bed.claim("data") / "model")
    adapted = PeftModel.from_pretrained(base, bed.output("happy") / "adapter")
    assert adapted.peft_config["default"].r == 16


async def test_the_secrets_value_reaches_the_trainer_and_nothing_else(happy_run: Run) -> None:
    bed, canary = happy_run.bed, happy_run.canary
    forms = [canary.encode(), base64.b64encode(canary.encode())]
    # The Secret did reach the trainer (envFrom), so finding it nowhere else means something.
    assert f"HF_TOKEN={canary}".encode() in happy_run.driver_env

    for (resource, _, name), obj in bed.cluster.emulator.objects.items():
        if "secrets" in str(resource):
            continue
        text = repr(obj.raw).encode()
        assert not any(form in text for form in forms), f"{resource} {name} holds the Secret"
    assert canary not in bed.operator_log()
    metrics = bed.metrics_text()
    assert "python_info" in metrics or "finetune_" in metrics  # the endpoint did answer
    assert canary not in metrics
    for folder in (bed.output("happy"), bed.rayjob_folder("happy")):
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        assert files
        for path in files:
            content = path.read_bytes()
            assert not any(form in content for form in forms), f"{path} holds the Secret"
