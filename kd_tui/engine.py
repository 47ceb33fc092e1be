"""Event sources: where the dashboard's engine events come from (the protocol), and what
every source shares: the terminal events and the trainer's one-line error.

The dashboard's one source of a real run is kd_tui/detached.py (DetachedRun): the trainer
is its own process (`kd distill`), never a thread of the UI process: MLX arrays belong to
the thread that built them, a trainer thread made the process abort at exit, and a child
isolates crashes and out-of-memory kills (docs/ARCHITECTURE.md). Pause, resume and stop
are words appended to the run's control file, whoever started it. Tests drive the UI with
a scripted source behind the same protocol (tests/scripted_source.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kd_core.config import RunSpec
from kd_core.events import (
    Event,
    RunFailed,
    RunFinished,
)

if TYPE_CHECKING:
    from textual.app import App

TERMINAL_EVENTS = (RunFinished, RunFailed)
ERROR_PREFIXES = ("kd: error: ", "kd: failed: ", "kd: ")
EXIT_GRACE_S = 30.0  # how long a trainer may take to exit after its last event


@runtime_checkable
class EventSource(Protocol):
    """Starts a run and reports its events to the app as EngineEvent messages.

    Exactly one terminal event (RunFinished or RunFailed) ends every start().
    """

    @property
    def running(self) -> bool: ...

    def start(self, spec: RunSpec, resume: bool = False) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None:
        """Release everything now (the app is quitting): kill a child, cancel a replay."""

    def drain(self) -> list[Event]:
        """Events queued since the last call, in order (a source may queue step events
        instead of posting each one; the UI takes them when it redraws)."""


EventSourceFactory = Callable[["App"], EventSource]


def one_line_error(stderr_lines: Sequence[str], returncode: int) -> str:
    """The trainer's last stderr line (its `kd: error: ...` one-liner) without the prefix."""
    for line in reversed(stderr_lines):
        text = line.strip()
        if not text:
            continue
        for prefix in ERROR_PREFIXES:
            if text.startswith(prefix):
                return text[len(prefix) :]
        return text
    if returncode < 0:
        return f"the trainer was killed by signal {-returncode}"
    return f"the trainer exited with status {returncode} and no message"
