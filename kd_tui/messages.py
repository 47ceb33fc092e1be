"""Messages the dashboard's parts exchange (dataclass-style Textual messages).

- StateChanged: a pane changed `app.state`; it bubbles to the app, which re-broadcasts a
  non-bubbling copy to every other pane so they can refresh.
- RunCompleted: a run finished and wrote adapters under `output` (Viewer and Runs reload).
- AttachRequested: a pane asks the app to follow the run in an output folder.
- EngineEvent: one kd_core event from the event source (posted from its worker thread;
  `post_message` is thread-safe), or None: "events are waiting in the source's queue".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from kd_core.events import Event


@dataclass
class StateChanged(Message):
    """`app.state` changed; `what` says which part ("config", "models", "domains", ...)."""

    what: str = ""


@dataclass
class RunCompleted(Message):
    """A run finished (or was stopped with a checkpoint); adapters are under `output`."""

    output: Path


@dataclass
class AttachRequested(Message):
    """Follow the run in `output` in the Train pane (the Runs pane asks; the app does it)."""

    output: Path


@dataclass
class EngineEvent(Message, bubble=False):
    """An engine event for the app (never bubbles: it is posted to the app itself).

    `event` None is a wake-up: take the source's queued events (EventSource.drain()).
    """

    event: Event | None = None


def broadcast_copy(message: StateChanged | RunCompleted) -> StateChanged | RunCompleted:
    """A copy for re-broadcasting to panes that does not bubble back up to the app
    (the original would loop: pane -> app -> pane -> app ...)."""
    copy: StateChanged | RunCompleted
    if isinstance(message, StateChanged):
        copy = StateChanged(message.what)
    else:
        copy = RunCompleted(message.output)
    copy.bubble = False  # type: ignore[misc]  # instance override of the ClassVar
    return copy
