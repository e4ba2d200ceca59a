"""What one reconcile pass has decided so far: the job's new status and the Events to post.

The pass records here instead of writing as it goes; at its end the status is written once
and the Events are posted in the order they were queued (jobset's updateStatusOpts).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from finetune_operator import status, timeutil
from finetune_operator.actions import Event
from finetune_operator.api import FineTuneJobStatus, Phase
from finetune_operator.phases import Observation


@dataclasses.dataclass
class Outcome:
    """The stored status, the status this pass will leave, and the Events it queued."""

    stored: FineTuneJobStatus
    now: datetime.datetime
    max_message_length: int = 1024
    status: FineTuneJobStatus = dataclasses.field(init=False)
    observation: Observation | None = None
    queued: list[Event] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = self.stored

    @classmethod
    def start(
        cls, body: Mapping[str, Any], now: datetime.datetime, *, max_message_length: int
    ) -> Outcome:
        return cls(status.parse_status(body.get("status")), now, max_message_length)

    @property
    def finished(self) -> bool:
        """The stored status is final: nothing this pass observes changes it."""
        return self.stored.phase is not None and self.stored.phase.is_terminal()

    def observe(
        self,
        observation: Observation,
        *,
        generation: int | None = None,
        rayjob: Mapping[str, Any] | None = None,
        rayjob_name: str | None = None,
        attempts: int | None = None,
    ) -> None:
        """Record what the job looks like now; the pass's last observation is the one written."""
        self.observation = observation
        self.status = status.observe(
            self.stored,
            observation,
            now=timeutil.format_time(self.now),
            generation=generation,
            rayjob_status=(rayjob or {}).get("status"),
            rayjob_name=rayjob_name,
            attempts=attempts,
            max_message_length=self.max_message_length,
        )

    def queue(self, event: Event) -> None:
        self.queued.append(event)

    def patch(self) -> dict[str, Any]:
        """The status merge patch (empty when nothing that matters changed)."""
        return status.status_patch(self.stored, self.status)

    def events(self, patch: Mapping[str, Any]) -> list[Event]:
        """The queued Events, then one for the new phase or reason if the patch changes it."""
        events = list(self.queued)
        observation = self.observation
        if not patch or observation is None:
            return events
        if "phase" in patch or self.stored.reason != observation.reason:
            failed = observation.phase is Phase.FAILED or observation.reason == "KubeRayMissing"
            events.append(
                Event(
                    "Warning" if failed else "Normal",
                    observation.reason,
                    f"{observation.phase.value}: {patch.get('message', observation.message)}",
                )
            )
        return events
