"""RFC 3339 timestamps as Kubernetes writes them (UTC, second precision, `Z`)."""

from __future__ import annotations

import datetime


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime.datetime:
    """A timestamp from the API; naive ones are taken as UTC."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def seconds_left(
    since: str | None, limit_seconds: int | None, now: datetime.datetime
) -> float | None:
    """Seconds until `limit_seconds` after `since` (negative once passed); None without both."""
    if limit_seconds is None or not since:
        return None
    return limit_seconds - (now - parse(since)).total_seconds()
