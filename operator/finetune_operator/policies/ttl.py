"""runPolicy.ttlSecondsAfterFinished: a finished job is deleted that long after it finished."""

from __future__ import annotations

import datetime

from finetune_operator import timeutil
from finetune_operator.actions import DeleteJob, WakeAt
from finetune_operator.api import FineTuneJobStatus


def decide(
    ttl_seconds: int | None, status: FineTuneJobStatus, now: datetime.datetime
) -> DeleteJob | WakeAt | None:
    """Delete the job once its TTL has passed, else wake when it will; None: never."""
    if status.phase is None or not status.phase.is_terminal():
        return None
    left = timeutil.seconds_left(status.completion_time, ttl_seconds, now)
    if left is None:
        return None
    if left > 0:
        return WakeAt(left)
    return DeleteJob(f"finished {ttl_seconds}s ago (ttlSecondsAfterFinished)")
