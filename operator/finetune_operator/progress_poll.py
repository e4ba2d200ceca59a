"""Reading the running trainer's GET /progress, off the reconcile path.

Each running job has one background task that reads its endpoint every few seconds and
keeps the newest valid snapshot; all tasks share one HTTP session, a bound on reads in
flight and a timeout per read, so a thousand jobs never mean a thousand serial calls and a
slow endpoint holds up only its own job. The reconcile pass copies the snapshot into status
(`take_progress`); the task asks for a pass when it has news the throttle lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from finetune_operator import progress_status, retention_status, timeutil
from finetune_operator.api import Phase
from finetune_operator.outcome import Outcome
from finetune_operator.progress_status import MalformedProgress, Snapshot
from finetune_operator.settings import Settings

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
MAX_BODY_BYTES = 1 << 20  # the contract's body is a few hundred bytes; refuse floods


def progress_url(rayjob_status: Mapping[str, Any] | None, port: int) -> str | None:
    """http://<host of status.dashboardURL>:<port>/progress; None before KubeRay sets it."""
    dashboard = str((rayjob_status or {}).get("dashboardURL") or "")
    if not dashboard:
        return None
    host = urlsplit(dashboard if "://" in dashboard else f"http://{dashboard}").hostname
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    return f"http://{host}:{port}/progress"


def retry_delay(failures: int, *, interval: float, cap: float) -> float:
    """Seconds before the next read after `failures` failed ones in a row: the interval,
    doubling with each failure, at most `cap` (and never less than the interval)."""
    if failures <= 0:
        return interval
    return max(interval, min(cap, interval * 2.0 ** (failures - 1)))


@dataclasses.dataclass
class Watch:
    """One job's reads: where, the newest snapshot, and how reads have been going."""

    url: str
    wake: Callable[[float], None]  # asks for a reconcile pass of the job in so many seconds
    snapshot: Snapshot | None = None
    read_at: str | None = None  # when the snapshot was read (RFC 3339)
    failures: int = 0
    failing_since: float | None = None
    problem: str | None = None  # "Reason: details" of the newest failed read
    announced: bool = False  # a pass was asked to show the problem
    last_write: float | None = None  # when a pass last wrote a snapshot into status
    last_checkpoint_event: float | None = None
    task: asyncio.Task[None] | None = None
    reading: asyncio.Task[None] | None = None

    def visible_problem(self, now: float, grace: float) -> str | None:
        """The problem to show: reads have failed for at least the grace period."""
        if self.failing_since is None or now - self.failing_since < grace:
            return None
        return self.problem


class ProgressPoller:
    """The background reads of every running job's /progress."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.watches: dict[Key, Watch] = {}
        self._limit = asyncio.Semaphore(settings.progress_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def follow(self, key: Key, url: str, wake: Callable[[float], None]) -> Watch:
        """Read `url` for the job from now on (a no-op when it is read already)."""
        watch = self.watches.get(key)
        if watch is not None and (watch.url == url or self._closed):
            return watch
        self.stop(key)
        watch = Watch(url=url, wake=wake)
        if self._closed:  # the operator is stopping: a pass still running starts no reads
            return watch
        watch.task = asyncio.get_running_loop().create_task(
            self._poll_forever(watch), name=f"progress {key[0]}/{key[1]}"
        )
        watch.task.add_done_callback(_report_crash)
        self.watches[key] = watch
        return watch

    def stop(self, key: Key) -> None:
        watch = self.watches.pop(key, None)
        if watch is None:
            return
        for task in (watch.task, watch.reading):
            if task is not None:
                task.cancel()

    async def settle(self, key: Key) -> None:
        """Wait for a read under way (bounded by its timeout): it may carry the result."""
        watch = self.watches.get(key)
        if watch is not None and watch.reading is not None and not watch.reading.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({watch.reading}, timeout=self.settings.progress_timeout_seconds)

    async def close(self) -> None:
        self._closed = True
        for key in list(self.watches):
            self.stop(key)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _poll_forever(self, watch: Watch) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A task of its own, so that a pass can wait for it while this loop is cancelled.
            watch.reading = loop.create_task(self._read(watch))
            await asyncio.shield(watch.reading)
            await asyncio.sleep(self._next_delay(watch, loop.time()))

    def _next_delay(self, watch: Watch, now: float) -> float:
        settings = self.settings
        delay = retry_delay(
            watch.failures,
            interval=settings.progress_poll_seconds,
            cap=settings.progress_backoff_max_seconds,
        )
        if watch.failing_since is not None and not watch.announced:
            # Do not let the backoff hide the end of the grace period.
            until_grace = watch.failing_since + settings.progress_grace_seconds - now
            delay = min(delay, max(until_grace, 0.0) + 0.01)
        return delay

    async def _read(self, watch: Watch) -> None:
        """One read; its outcome lands in `watch`, and a pass is asked for when it matters."""
        async with self._limit:
            try:
                snapshot = progress_status.parse_body(await self._get(watch.url))
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                self._failed(watch, f"ProgressUnreachable: GET {watch.url}: {_describe(error)}")
                return
            except MalformedProgress as error:
                self._failed(watch, f"ProgressMalformed: GET {watch.url}: {error}")
                return
        self._succeeded(watch, snapshot)

    async def _get(self, url: str) -> bytes:
        if self._closed:
            raise aiohttp.ClientConnectionError("the operator is stopping")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.settings.progress_concurrency)
            self._session = aiohttp.ClientSession(connector=connector)
        timeout = aiohttp.ClientTimeout(total=self.settings.progress_timeout_seconds)
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise MalformedProgress(f"the body is larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    def _failed(self, watch: Watch, problem: str) -> None:
        now = asyncio.get_running_loop().time()
        watch.failures += 1
        watch.problem = problem
        if watch.failing_since is None:
            watch.failing_since = now
        logger.debug("progress read failed (%d in a row): %s", watch.failures, problem)
        if not watch.announced and watch.visible_problem(now, self.settings.progress_grace_seconds):
            watch.announced = True
            watch.wake(0.0)

    def _succeeded(self, watch: Watch, snapshot: Snapshot) -> None:
        now = asyncio.get_running_loop().time()
        recovered = watch.announced
        watch.failures, watch.failing_since, watch.problem, watch.announced = 0, None, None, False
        news = watch.snapshot is None or watch.snapshot.content() != snapshot.content()
        if news:
            watch.snapshot = snapshot
            watch.read_at = timeutil.format_time(timeutil.now())
        if recovered or (news and snapshot.result is not None):
            watch.wake(0.0)  # the final result and a recovery are never held back
        elif news:
            window = self.settings.progress_write_seconds
            watch.wake(0.0 if watch.last_write is None else watch.last_write + window - now)


def _report_crash(task: asyncio.Task[None]) -> None:
    """A read loop must not end unseen: the job's progress would silently freeze."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


def take_progress(watch: Watch, outcome: Outcome, settings: Settings, *, now: float) -> None:
    """Carry the watch's newest snapshot and read health into the pass's status, with the
    milestone Events the change crosses. A pass that ends the run takes the snapshot
    whatever the throttle says: it is the last chance."""
    status = outcome.status
    final = status.phase is not Phase.RUNNING
    snapshot = watch.snapshot
    if snapshot is not None:
        due = progress_status.write_due(
            outcome.stored,
            snapshot,
            last_write=watch.last_write,
            now=now,
            window=settings.progress_write_seconds,
        )
        if due or (final and progress_status.is_news(outcome.stored, snapshot)):
            status = progress_status.with_snapshot(status, snapshot, watch.read_at or "")
            status = retention_status.with_retention(status, now=timeutil.format_time(outcome.now))
            watch.last_write = now
    if not final:
        problem = watch.visible_problem(now, settings.progress_grace_seconds)
        if problem is not None or snapshot is not None:
            status = progress_status.with_availability(
                status, problem, now=timeutil.format_time(outcome.now)
            )
    last_event = watch.last_checkpoint_event
    checkpoint_due = last_event is None or now - last_event >= settings.checkpoint_event_seconds
    events = progress_status.milestone_events(
        outcome.stored, status, checkpoint_event_due=checkpoint_due
    )
    events += progress_status.availability_events(outcome.stored, status)
    events += retention_status.retention_events(outcome.stored, status)
    if any(event.reason == "CheckpointSaved" for event in events):
        watch.last_checkpoint_event = now
    outcome.status = status
    for event in events:
        outcome.queue(event)
