"""runPolicy.activeDeadlineSeconds: a job that runs too long ends Failed/DeadlineExceeded.

KubeRay enforces the same deadline on the RayJob; the operator enforces it too, counted from
the FineTuneJob's startTime, so that it also holds while the RayJob waits or retries.
"""

from __future__ import annotations

import datetime

from finetune_operator import timeutil
from finetune_operator.actions import Fail, WakeAt
from finetune_operator.api import FineTuneJobStatus, Phase
from finetune_operator.phases import Observation


def decide(
    deadline_seconds: int | None, status: FineTuneJobStatus, now: datetime.datetime
) -> Fail | WakeAt | None:
    """For the status as this pass leaves it: fail the job once its deadline has passed, else
    wake when it will; None when there is no deadline to watch."""
    if status.phase is None or status.phase.is_terminal() or deadline_seconds is None:
        return None
    left = timeutil.seconds_left(status.start_time, deadline_seconds, now)
    if left is None:
        return None
    if left > 0:
        return WakeAt(left)
    return Fail(deadline_observation(deadline_seconds))


def deadline_observation(deadline_seconds: int) -> Observation:
    return Observation(
        Phase.FAILED,
        "DeadlineExceeded",
        f"the job ran longer than spec.runPolicy.activeDeadlineSeconds ({deadline_seconds}s)",
    )
