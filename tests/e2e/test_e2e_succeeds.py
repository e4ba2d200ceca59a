"""Scenario 1: a FineTuneJob applied to the API server becomes a trained adapter."""

from __future__ import annotations

import pytest

from tests.e2e.e2e_cluster import EndToEnd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_applied_job_trains_an_adapter_that_loads(e2e: EndToEnd) -> None:
    await e2e.apply(e2e.job("happy"))

    status = await e2e.wait_phase("happy", "Succeeded")

    assert e2e.phases("happy") == ["Pending", "Initializing", "Running", "Succeeded"]
    assert status["attempts"] == 1
    assert status["reason"] == "Completed"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Succeeded"] == "True"
    assert e2e.history_steps("happy") == sorted(set(e2e.history_steps("happy")))
    assert max(e2e.history_steps("happy")) == 12
    metrics = e2e.metrics("happy")
    assert metrics["resumed_from_step"] == 0
    assert (
        metrics["eval_loss"] < metrics["baseline_eval_loss"]
        if "baseline_eval_loss" in metrics
        else True
    )

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(e2e.claim("data") / "model")
    adapted = PeftModel.from_pretrained(base, e2e.output("happy") / "adapter")
    assert adapted.peft_config["default"].r == 16
