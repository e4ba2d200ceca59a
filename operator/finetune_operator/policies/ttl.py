"""runPolicy.ttlSecondsAfterFinished: a finished job is deleted that long after it finished."""

from __future__ import annotations

import datetime

from finetune_operator import timeutil


def seconds_until_deletion(
    completion_time: str | None, ttl_seconds: int | None, now: datetime.datetime
) -> float | None:
    """Seconds left before the job is due for deletion (<= 0: now); None: never."""
    return timeutil.seconds_left(completion_time, ttl_seconds, now)
