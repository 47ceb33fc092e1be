"""Engine events printed for a person (TextPrinter) or a parent process (JsonLinesPrinter)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from kd_core.events import CheckpointSaved, Event, Progress, RunFailed, Step, describe


class TextPrinter:
    """Prints engine events for a person at a terminal, in the words of `describe` (the
    dashboard's log uses the same). Steps every `report_every`; progress when it completes
    or (build) every 20 units; dimmed detail only when not quiet."""

    def __init__(self, stream: TextIO, report_every: int, quiet: bool = False) -> None:
        self.out = stream
        self.every = report_every
        self.quiet = quiet

    def __call__(self, e: Event) -> None:
        if isinstance(e, RunFailed):
            return  # main() prints the error once, on stderr
        if isinstance(e, Step) and (
            self.quiet or (e.step % self.every and e.step not in (1, e.total_steps))
        ):
            return
        if isinstance(e, Progress) and (
            self.quiet or (e.phase == "build" and e.done % 20 and e.done != e.total)
        ):
            return
        d = describe(e)
        if d is None:
            return
        prefix = {"warning": "warning: ", "error": "error: "}.get(d.level, "")
        indent = "  " if isinstance(e, Step | Progress | CheckpointSaved) else ""
        print(f"{indent}{prefix}{d.text}", file=self.out, flush=True)


class JsonLinesPrinter:
    """One JSON object per event on stdout: the protocol a parent process (the TUI) reads."""

    def __init__(self, stream: TextIO) -> None:
        self.out = stream

    def __call__(self, e: Event) -> None:
        self.out.write(e.to_json() + "\n")
        self.out.flush()


def tee(*sinks: Callable[[Event], None]) -> Callable[[Event], None]:
    """One sink that hands each event to every one of `sinks`, in order."""

    def send(e: Event) -> None:
        for sink in sinks:
            sink(e)

    return send
