"""The stand-in's KubeRay state machine and head pod paths, without a cluster or a process."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tests.e2e.rayjob_states import RayJobInfo, reconcile
from tests.e2e.standin_attempts import failure_message
from tests.e2e.standin_pods import PathRewriter

pytestmark = [pytest.mark.e2e]

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
SPEC = {
    "entrypoint": "finetune run /etc/finetune/job.yaml",
    "backoffLimit": 1,
    "shutdownAfterJobFinishes": True,
}
RUNNING = RayJobInfo("RUNNING", "Job is currently running.", 1)
FAILED = RayJobInfo(
    "FAILED", "Job entrypoint command failed with exit code 1. No logs available.", 1, 2
)
DONE = RayJobInfo("SUCCEEDED", "Job finished successfully.", 1, 2)


def walk(spec, status, info):
    step = reconcile("job", {**SPEC, **spec}, status, info, NOW, suffix="abcde")
    return step.status, step


def test_a_job_goes_new_initializing_running_complete() -> None:
    status, step = walk({}, None, None)
    assert (status["jobDeploymentStatus"], status["jobId"], status["startTime"]) == (
        "Initializing",
        "job-abcde",
        "2026-12-06T12:00:00Z",
    )
    assert step.write and not step.start
    status, step = walk({}, status, None)
    assert (status["jobDeploymentStatus"], status["dashboardURL"], step.start) == (
        "Running",
        "127.0.0.1:8265",
        True,
    )
    status, step = walk({}, status, RUNNING)
    assert (status["jobStatus"], status["message"], step.write) == (
        "RUNNING",
        "Job is currently running.",
        True,
    )
    status, step = walk({}, status, DONE)
    assert (status["jobDeploymentStatus"], status["jobStatus"]) == ("Complete", "SUCCEEDED")
    assert (status["succeeded"], status["failed"], status["endTime"]) == (
        1,
        0,
        "2026-12-06T12:00:00Z",
    )
    _, step = walk({}, status, DONE)
    assert step.stop and not step.write  # shutdownAfterJobFinishes: the cluster goes, status stays


def test_a_failed_attempt_retries_while_backoff_limit_allows() -> None:
    running = {
        "jobDeploymentStatus": "Running",
        "jobStatus": "RUNNING",
        "jobId": "job-x",
        "failed": 0,
    }
    status, step = walk({}, running, FAILED)
    # KubeRay counts the failure and turns Failed into Retrying in the same write, message kept.
    assert (
        status["jobDeploymentStatus"],
        status["jobStatus"],
        status["reason"],
        status["failed"],
    ) == ("Retrying", "FAILED", "AppFailed", 1)
    assert status["message"] == FAILED.message
    status, step = walk({}, status, None)
    assert (
        step.stop
        and status["jobDeploymentStatus"] == ""
        and "jobId" not in status
        and "message" not in status
    )
    status, _ = walk({}, status, None)
    assert status["jobDeploymentStatus"] == "Initializing" and status["jobId"] == "job-abcde"
    status, _ = walk({}, {**status, "jobDeploymentStatus": "Running"}, FAILED)
    assert (status["jobDeploymentStatus"], status["failed"]) == (
        "Failed",
        2,
    )  # backoffLimit 1: done


@pytest.mark.parametrize("backoff_limit", [None, 0])
def test_without_retries_a_failure_is_final(backoff_limit) -> None:
    status, _ = walk({"backoffLimit": backoff_limit}, {"jobDeploymentStatus": "Running"}, FAILED)
    assert (status["jobDeploymentStatus"], status["failed"]) == ("Failed", 1)


def test_suspend_stops_the_cluster_and_resume_starts_anew() -> None:
    status, step = walk(
        {"suspend": True}, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, RUNNING
    )
    assert status["jobDeploymentStatus"] == "Suspending" and not step.stop
    status, step = walk({"suspend": True}, status, RUNNING)
    assert (status["jobDeploymentStatus"], status["jobStatus"], step.stop) == (
        "Suspended",
        "",
        True,
    )
    _, step = walk({"suspend": True}, status, None)
    assert not step.write
    status, step = walk({"suspend": False}, status, None)
    assert status["jobDeploymentStatus"] == "" and step.write


def test_the_deadline_fails_without_retry() -> None:
    started = {"jobDeploymentStatus": "Running", "startTime": "2026-12-06T11:58:00Z"}
    status, _ = walk({"activeDeadlineSeconds": 60, "backoffLimit": 3}, started, RUNNING)
    assert (status["jobDeploymentStatus"], status["reason"]) == ("Failed", "DeadlineExceeded")


def test_a_failed_entrypoint_gets_rays_message(tmp_path: Path) -> None:
    log = tmp_path / "driver.log"
    log.write_text("".join(f"line {n}\n" for n in range(15)))
    message = failure_message(2, log)
    assert message.startswith(
        "Job entrypoint command failed with exit code 2, last available logs (truncated to 20,000 chars):\nline 5\n"
    )
    assert message.endswith("line 14\n")
    log.write_text("")
    assert (
        failure_message(-9, log)
        == "Job entrypoint command failed with exit code -9. No logs available."
    )


def test_paths_at_under_or_above_a_mount_move_under_the_root() -> None:
    rewrite = PathRewriter(["/etc/finetune", "/mnt/pvc/data"], Path("/w/root"))
    assert (
        rewrite.text("finetune run /etc/finetune/job.yaml")
        == "finetune run /w/root/etc/finetune/job.yaml"
    )
    assert rewrite.text("/mnt/pvc") == "/w/root/mnt/pvc"
    assert (
        rewrite.text("--out=/mnt/pvc/data/x /etc/hosts /etc")
        == "--out=/w/root/mnt/pvc/data/x /etc/hosts /w/root/etc"
    )
    assert rewrite.text("/etc/finetunex") == "/etc/finetunex"
