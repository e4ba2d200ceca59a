"""The processes a test's run started, found by a mark in their environment: a run's
driver passes its environment to the raylet, the GCS and every Ray worker."""

from __future__ import annotations

from pathlib import Path

MARK_ENV = "FINETUNE_TEST_RUN_MARK"


def marked_commands(mark: str) -> dict[int, str]:
    """The command lines of the live processes whose environment carries `mark`, by PID
    (zombies have no environment left)."""
    found = {}
    needle = f"{MARK_ENV}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(entry.name)] = command.decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found
