"""runPolicy.activeDeadlineSeconds: a job that runs too long ends Failed/DeadlineExceeded.

KubeRay enforces the same deadline on the RayJob; the operator enforces it too, counted from
the FineTuneJob's startTime, so that it also holds while the RayJob waits or retries.
"""

from __future__ import annotations

import datetime

from finetune_operator import timeutil
from finetune_operator.api import Phase
from finetune_operator.phases import Observation


def seconds_left(
    start_time: str | None, deadline_seconds: int | None, now: datetime.datetime
) -> float | None:
    """Seconds until the deadline (negative once passed); None when there is no deadline."""
    return timeutil.seconds_left(start_time, deadline_seconds, now)


def deadline_observation(deadline_seconds: int) -> Observation:
    return Observation(
        Phase.FAILED,
        "DeadlineExceeded",
        f"the job ran longer than spec.runPolicy.activeDeadlineSeconds ({deadline_seconds}s)",
    )
