"""KubeRay v1.7's RayJob state machine, as a pure function the stand-in drives.

Read from `ray-operator/controllers/ray/rayjob_controller.go` (v1.7.0): one reconcile moves
`jobDeploymentStatus` at most one step (New → Initializing → Running → Complete/Failed,
Suspending → Suspended → New, Failed → Retrying → New while `backoffLimit` allows), then
`checkBackoffLimitAndUpdateStatusIfNeeded` counts `failed`/`succeeded`, and the status is
written only when `jobStatus` or `jobDeploymentStatus` changed (with `endTime` on a
terminal one). Where KubeRay asks the Ray dashboard for the job's info, this asks the
attempt (`RayJobInfo`); where it creates or deletes the RayCluster, this returns `start`
or `stop` for the caller to carry out before it writes the status.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

DASHBOARD_URL = "127.0.0.1:8265"  # the design's contract: what "ready" looks like here

# Ray's own job messages (ray/dashboard/modules/job/common.py, JobInfo.__post_init__).
RAY_MESSAGES = {
    "PENDING": "Job has not started yet.",
    "RUNNING": "Job is currently running.",
    "SUCCEEDED": "Job finished successfully.",
}


@dataclasses.dataclass(frozen=True)
class RayJobInfo:
    """What the dashboard's GET /api/jobs/<id> says about the attempt's entrypoint."""

    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str
    start_ms: int = 0
    end_ms: int = 0


@dataclasses.dataclass(frozen=True)
class Step:
    """The status after one reconcile, and what must happen to the cluster first."""

    status: dict[str, Any]
    start: bool = False  # create the cluster and run the entrypoint (one new attempt)
    stop: bool = False  # delete the cluster: no process of the attempt may remain
    write: bool = False  # the status changed in a way KubeRay writes


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_millis(millis: int) -> str:
    return rfc3339(datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC))


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def reconcile(
    name: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any] | None,
    info: RayJobInfo | None,
    now: datetime.datetime,
    *,
    suffix: str,
) -> Step:
    """One pass of RayJobReconciler.Reconcile for a RayJob in K8sJobMode.

    `info` is the attempt's job info (None when no attempt runs); `suffix` makes the
    generated job id and cluster name unique, as KubeRay's random suffix does."""
    old = dict(status or {})
    new = copy.deepcopy(old)
    deployment = old.get("jobDeploymentStatus") or ""
    start = stop = False

    match deployment:
        case "":
            if not old.get("jobId"):
                new["jobId"] = f"{name}-{suffix}"
            if not old.get("rayClusterName"):
                new["rayClusterName"] = f"{name}-{suffix}"
            new["jobStatus"] = old.get("jobStatus") or ""
            new["jobDeploymentStatus"] = "Initializing"
            new["startTime"] = rfc3339(now)
        case "Initializing":
            if not _suspending(spec, new) and not _past_deadline(spec, new, now):
                # The cluster is "ready" at once: the dashboard URL, then the submitter.
                new["dashboardURL"] = DASHBOARD_URL
                new["jobDeploymentStatus"] = "Running"
                start = True
        case "Running":
            if not _suspending(spec, new) and not _past_deadline(spec, new, now):
                _follow_job(new, info)
        case "Suspending" | "Retrying":
            stop = True
            # Reset as KubeRay does; its fields are omitempty, so "reset" is "absent" on the wire.
            for key in ("rayClusterName", "dashboardURL", "jobId", "message", "reason"):
                new.pop(key, None)
            for key in ("rayClusterStatus", "rayJobInfo", "jobStatusCheckFailureStartTime"):
                new.pop(key, None)
            new["jobStatus"] = ""
            new["jobDeploymentStatus"] = "Suspended" if deployment == "Suspending" else ""
        case "Suspended":
            if spec.get("suspend"):
                return Step(new)
            new["jobStatus"] = ""
            new["jobDeploymentStatus"] = ""
        case "Complete" | "Failed":
            # shutdownAfterJobFinishes: the cluster goes; the status stays as it is.
            return Step(new, stop=bool(spec.get("shutdownAfterJobFinishes")))
        case _:
            return Step(new)

    _count_and_maybe_retry(spec, new)
    changed = (old.get("jobStatus") or "") != (new.get("jobStatus") or "") or (
        old.get("jobDeploymentStatus") or ""
    ) != (new.get("jobDeploymentStatus") or "")
    if changed and new["jobDeploymentStatus"] in ("Complete", "Failed"):
        new["endTime"] = rfc3339(now)
    return Step(new, start=start, stop=stop, write=changed)


def _suspending(spec: Mapping[str, Any], status: dict[str, Any]) -> bool:
    """updateStatusToSuspendingIfNeeded: only Running and Initializing may suspend."""
    if not spec.get("suspend"):
        return False
    status["jobDeploymentStatus"] = "Suspending"
    return True


def _past_deadline(spec: Mapping[str, Any], status: dict[str, Any], now: datetime.datetime) -> bool:
    """checkActiveDeadlineAndUpdateStatusIfNeeded: the deadline counts from status.startTime."""
    seconds = spec.get("activeDeadlineSeconds")
    started = parse_time(status.get("startTime"))
    if seconds is None or started is None or now < started + datetime.timedelta(seconds=seconds):
        return False
    status["jobDeploymentStatus"] = "Failed"
    status["reason"] = "DeadlineExceeded"
    status["message"] = (
        f"The RayJob has passed the activeDeadlineSeconds. StartTime: {status['startTime']}. "
        f"ActiveDeadlineSeconds: {seconds}"
    )
    return True


def _follow_job(status: dict[str, Any], info: RayJobInfo | None) -> None:
    """The Running case's reading of the job info: a terminal Ray job ends the RayJob."""
    if info is None:
        # The submitter finished (the attempt is gone) but the dashboard knows no such job.
        status["jobDeploymentStatus"] = "Failed"
        status["reason"] = "AppFailed"
        status["message"] = "Submitter completed but Ray job not found in RayCluster."
        return
    deployment, reason = "Running", ""
    if info.status in ("SUCCEEDED", "FAILED", "STOPPED"):
        deployment = "Failed" if info.status == "FAILED" else "Complete"
        reason = "AppFailed" if info.status == "FAILED" else ""
    status["jobStatus"] = info.status
    status["jobDeploymentStatus"] = deployment
    status["reason"] = reason
    status["message"] = info.message
    job_info: dict[str, Any] = {}
    if info.start_ms:
        job_info["startTime"] = from_millis(info.start_ms)
    if info.end_ms:
        job_info["endTime"] = from_millis(info.end_ms)
    status["rayJobInfo"] = job_info


def _count_and_maybe_retry(spec: Mapping[str, Any], status: dict[str, Any]) -> None:
    """checkBackoffLimitAndUpdateStatusIfNeeded: count this pass's end, retry a failure
    while failed < backoffLimit + 1 (never one that ran out of time)."""
    failed = int(status.get("failed") or 0)
    succeeded = int(status.get("succeeded") or 0)
    deployment = status.get("jobDeploymentStatus")
    if deployment == "Failed":
        failed += 1
    if status.get("jobStatus") == "SUCCEEDED" and deployment == "Complete":
        succeeded += 1
    status["failed"], status["succeeded"] = failed, succeeded
    limit = spec.get("backoffLimit")
    if deployment != "Failed" or limit is None or failed >= int(limit) + 1:
        return
    if status.get("reason") in ("DeadlineExceeded", "JobStatusCheckTimeoutExceeded"):
        return
    status["jobDeploymentStatus"] = "Retrying"
