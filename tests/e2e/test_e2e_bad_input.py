"""Scenario 5: data that is all malformed fails the job with the data stage's own words."""

from __future__ import annotations

import pytest

from tests.e2e.e2e_cluster import EndToEnd
from tests.integration.operator.operator_cluster import RAYJOBS, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_all_malformed_data_fails_once_naming_file_and_lines(e2e: EndToEnd) -> None:
    lines = ["not json at all", '{"messages": "a string"}', '{"text": 3}', "[1, 2"]
    (e2e.claim("data") / "broken.jsonl").write_text("\n".join(lines) + "\n")
    await e2e.apply(
        e2e.job("broken").train("pvc://data/broken.jsonl").spec(runPolicy={"backoffLimit": 2})
    )

    status = await e2e.wait_phase("broken", "Failed")

    assert status["reason"] == "InvalidInput"
    message = status["message"]
    assert "broken.jsonl" in message and "4 of 4 records are malformed" in message
    assert "broken.jsonl:1" in message and "broken.jsonl:2" in message
    assert "Job entrypoint command" not in message  # the trainer's words, not Ray's wrapper
    warnings = [e for e in e2e.events("broken") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["InvalidInput"]
    assert "broken.jsonl:1" in warnings[0]["message"]
    # Bad input would fail every attempt alike: none of backoffLimit's retries is spent.
    assert status["attempts"] == 1
    await eventually(lambda: not e2e.cluster.names(RAYJOBS), timeout=30, what="the RayJob to go")
    assert sorted(p.name for p in e2e.rayjob_folder("broken").glob("attempt-*.log")) == [
        "attempt-1.log"
    ]
