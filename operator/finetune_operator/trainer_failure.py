"""What the trainer said when an attempt failed, read out of KubeRay's RayJob message.

KubeRay copies the Ray job's message into `status.message`; for a failed entrypoint Ray's
job supervisor makes it "Job entrypoint command failed with exit code N, last available
logs (truncated to 20,000 chars):" and the log's last 10 lines. `finetune run` ends a run
it refuses with one `finetune run: ...` line per problem and exit code 2 (EXIT_BAD_INPUT),
so both the cause and whether another attempt could help are in that message.
"""

from __future__ import annotations

import dataclasses
import re

from finetune_operator.errors import EXIT_BAD_INPUT

TRAINER_PREFIX = "finetune run: "
EXIT_CODE = re.compile(r"^Job entrypoint command failed with exit code (-?\d+)")


@dataclasses.dataclass(frozen=True)
class TrainerFailure:
    exit_code: int | None  # None when the message is not Ray's failed-entrypoint message
    problems: tuple[str, ...]  # the trainer's own error lines, without the prefix

    @property
    def bad_input(self) -> bool:
        """The trainer refused the job's input: every attempt would fail the same way."""
        return self.exit_code == EXIT_BAD_INPUT and bool(self.problems)

    def summary(self) -> str:
        return "; ".join(self.problems)


def read_failure(message: str | None) -> TrainerFailure | None:
    """The trainer's failure in a RayJob message; None when the message holds none."""
    if not message:
        return None
    code = EXIT_CODE.match(message)
    problems = []
    for line in message.splitlines():
        # A progress bar may share the line (carriage returns): the problem starts at the prefix.
        at = line.find(TRAINER_PREFIX)
        if at >= 0 and line[at + len(TRAINER_PREFIX) :].strip():
            problems.append(line[at + len(TRAINER_PREFIX) :].strip())
    if code is None and not problems:
        return None
    return TrainerFailure(int(code.group(1)) if code else None, tuple(problems))
