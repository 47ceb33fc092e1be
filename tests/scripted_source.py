"""A scripted event source for the dashboard's tests: replays a list of engine events.

It stands in for kd_tui.detached.DetachedRun behind the same EventSource protocol, so UI
tests run without a trainer; tests/test_tui_e2e.py runs the real trainer from the UI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kd_core.config import RunSpec
from kd_core.events import Event, Paused, RunFinished
from kd_tui.engine import TERMINAL_EVENTS
from kd_tui.messages import EngineEvent

if TYPE_CHECKING:
    from textual.app import App


class ScriptedEventSource:
    """Replays `events` to the app (UI tests). Records what the UI asked for.

    Control words behave like the trainer's: "pause" holds the replay and reports
    Paused(True); "resume" continues; "stop" ends the run with RunFinished(stopped=True).
    A script without a terminal event leaves the run "in progress" (mid-run snapshots).
    """

    def __init__(
        self,
        app: App,
        events: Sequence[Event],
        delay: float = 0.001,
        resume_events: Sequence[Event] | None = None,
    ) -> None:
        self.app = app
        self.events = list(events)
        self.resume_events = list(resume_events) if resume_events is not None else None
        self.delay = delay
        self.controls: list[str] = []
        self.starts: list[tuple[RunSpec, bool]] = []
        self.posted: list[Event] = []
        self.done = False  # the replay ended (terminal event sent)
        self.replayed = False  # every scripted event was sent
        self._running = False
        self._unpaused: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._stop = False

    @property
    def running(self) -> bool:
        return self._running

    def start(self, spec: RunSpec, resume: bool = False) -> None:
        self.starts.append((spec, resume))
        script = self.resume_events if resume and self.resume_events is not None else self.events
        self._running = True
        self._stop = False
        self.done = False
        self.replayed = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._stopped = asyncio.Event()
        self.app.run_worker(
            self._replay(list(script)), name="kd-scripted", group="kd-engine", exit_on_error=False
        )

    def drain(self) -> list[Event]:
        return []  # every event is posted as it is replayed

    def _emit(self, event: Event) -> None:
        self.posted.append(event)
        self.app.post_message(EngineEvent(event))

    async def _replay(self, script: list[Event]) -> None:
        assert self._unpaused is not None
        try:
            for event in script:
                await asyncio.sleep(self.delay)
                await self._unpaused.wait()
                if self._stop:
                    self._emit(RunFinished("", [], stopped=True))
                    return
                self._emit(event)
                if isinstance(event, TERMINAL_EVENTS):
                    self.replayed = True
                    return
            self.replayed = True
            # No terminal event: the run stays "in progress" until stopped.
            assert self._stopped is not None
            await self._stopped.wait()
            self._emit(RunFinished("", [], stopped=True))
        finally:
            self._running = False
            self.done = True

    def pause(self) -> None:
        self.controls.append("pause")
        if self._unpaused is not None and self._running and self._unpaused.is_set():
            self._unpaused.clear()
            self._emit(Paused(True))

    def resume(self) -> None:
        self.controls.append("resume")
        if self._unpaused is not None and self._running and not self._unpaused.is_set():
            self._unpaused.set()
            self._emit(Paused(False))

    def stop(self) -> None:
        self.controls.append("stop")
        self._halt()

    def close(self) -> None:
        self._halt()

    def _halt(self) -> None:
        self._stop = True
        for event in (self._unpaused, self._stopped):
            if event is not None:
                event.set()
