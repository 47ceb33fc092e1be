"""Typed events: the one protocol through which the engine reports progress.

Consumers: the CLI prints them; the TUI turns them into Textual messages. Every event is
a frozen dataclass with a `kind`, and round-trips through JSON (`to_json` / `event_from_json`)
so a trainer in a child process can stream them as JSON lines on stdout
(`kd distill --events jsonl`). Nothing here imports MLX or Textual.

Stable contract: fields may be added (with defaults); none are renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True)
class RunStarted(Event):
    """A run begins: the pair, the domains in order, total optimiser steps over all."""

    kind: ClassVar[str] = "run_started"
    teacher: str
    student: str
    domains: list[str]
    config: dict[str, Any]
    output: str
    total_steps: int
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class PhaseStarted(Event):
    """phase: 'load' (models), 'teacher' (teacher pass), 'student' (training), 'eval'."""

    kind: ClassVar[str] = "phase_started"
    phase: str
    domain: str | None
    total: int
    message: str = ""


@dataclass(frozen=True)
class Progress(Event):
    """Progress inside a phase that is not a training step (teacher pass, loading)."""

    kind: ClassVar[str] = "progress"
    phase: str
    domain: str | None
    done: int
    total: int
    eta_s: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Step(Event):
    """One optimiser step of the student pass (emitted every step)."""

    kind: ClassVar[str] = "step"
    domain: str
    step: int
    total_steps: int
    kd: float
    ce: float
    combined: float
    lr: float
    tokens: int
    tokens_per_second: float
    peak_memory_gb: float
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class EvalResult(Event):
    kind: ClassVar[str] = "eval"
    domain: str
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    domain: str
    step: int
    path: str


@dataclass(frozen=True)
class CacheUsed(Event):
    """The teacher pass was served from the cache (hit) or written to it (miss)."""

    kind: ClassVar[str] = "cache"
    domain: str
    path: str
    hit: bool
    examples: int
    response_tokens: int


@dataclass(frozen=True)
class DomainFinished(Event):
    kind: ClassVar[str] = "domain_finished"
    domain: str
    result: dict[str, Any]


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    summary_path: str
    results: list[dict[str, Any]]
    stopped: bool = False


@dataclass(frozen=True)
class RunFailed(Event):
    """The run stopped on an error; `error` is one line a user can act on."""

    kind: ClassVar[str] = "run_failed"
    error: str
    domain: str | None = None
    step: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Log(Event):
    kind: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    paused: bool
    domain: str | None = None
    step: int | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        RunStarted,
        PhaseStarted,
        Progress,
        Step,
        EvalResult,
        CheckpointSaved,
        CacheUsed,
        DomainFinished,
        RunFinished,
        RunFailed,
        Log,
        Paused,
    )
}

EventSink = Callable[[Event], None]


def event_from_dict(d: dict[str, Any]) -> Event:
    cls = EVENT_TYPES.get(d.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown event kind {d.get('kind')!r}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def event_from_json(line: str) -> Event:
    return event_from_dict(json.loads(line))


def null_sink(event: Event) -> None:
    """Discard events (the default when nobody listens)."""


@dataclass
class EventRecorder:
    """Keep every event (tests, the Python API's result objects)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]
