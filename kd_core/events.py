"""Typed events: the one protocol through which the engine reports progress.

Consumers: the CLI prints them; the dashboard turns them into Textual messages. Both render an
event with the same `describe(event)`. Every event is a frozen dataclass with a `kind`, and
round-trips through JSON (`to_json` / `event_from_json`) so a trainer in another process can
stream them as JSON lines (`kd distill --events jsonl`). Nothing here imports MLX or Textual.

Stable contract: fields may be added (with defaults); none are renamed or removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

from kd_core.config import KDConfig

PROTOCOL_VERSION = 2  # 2: RunStarted names the models' weights fingerprints

Phase = Literal["build", "load", "teacher", "student", "eval"]
PHASES: tuple[str, ...] = get_args(Phase)
Level = Literal["info", "dim", "warning", "error", "success"]


@dataclass
class DomainResult:
    """What one domain's training produced: `distill_domain` returns it, `kd_summary.json`
    holds one per domain, and DomainFinished / RunFinished carry it (no MLX in here)."""

    domain: str
    final_kd_loss: float
    final_ce_loss: float
    final_combined_loss: float
    training_time_seconds: float
    adapter_path: str
    steps: int
    tokens: int
    tokens_per_second: float
    peak_memory_gb: float
    metrics_path: str = ""
    examples: int = 0
    teacher_cache: str | None = None
    resumed_from: int | None = None
    stopped: bool = False
    checkpoints: list[str] = field(default_factory=list)
    examples_cut: int = 0  # prompts cut from the front to fit max_seq_length
    examples_skipped: int = 0  # examples left out: no response token fits
    vocab_alignment: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # a data file's domain: what was read and trained

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainResult:
        names = {f.name for f in fields(cls)}
        defaults = {"metrics_path": "", "steps": 0, "tokens": 0}
        return cls(**{**defaults, **{k: v for k, v in d.items() if k in names}})


def _result(value: DomainResult | dict[str, Any]) -> DomainResult:
    return value if isinstance(value, DomainResult) else DomainResult.from_dict(value)


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
    config: KDConfig  # as JSON, its fields (KDConfig.from_record reads them back)
    output: str
    total_steps: int
    # kd_core/models/identity.py: which weights these paths held when the run began
    teacher_weights: str
    student_weights: str
    protocol: int = PROTOCOL_VERSION
    # Event files of runs from before the identities were recorded (protocol 1) still replay.
    LEGACY: ClassVar[dict[str, Any]] = {
        "teacher_weights": "not recorded",
        "student_weights": "not recorded",
    }


@dataclass(frozen=True)
class PhaseStarted(Event):
    """phase: 'build' (demo pair), 'load' (models), 'teacher' (teacher pass), 'student'
    (training), 'eval' (held-out measurement)."""

    kind: ClassVar[str] = "phase_started"
    phase: Phase
    domain: str | None
    total: int
    message: str = ""


@dataclass(frozen=True)
class Progress(Event):
    """Progress inside a phase that is not a training step (teacher pass, loading)."""

    kind: ClassVar[str] = "progress"
    phase: Phase
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
    on_policy: bool = False  # the student sampled this step's responses (on_policy_ratio)
    sample_tokens_per_second: float = 0.0  # its sampling speed (0 on other steps)
    # A remote teacher's scoring of this step (positions per second, round trip included;
    # 0 when no remote teacher scored it: kd_core/remote/step_targets.py).
    teacher_tokens_per_second: float = 0.0


@dataclass(frozen=True)
class EvalResult(Event):
    """Held-out figures of one student against the teacher (`kd eval`)."""

    kind: ClassVar[str] = "eval"
    domain: str
    step: int
    metrics: dict[str, float]
    student: str = ""  # "base", "kd", "ce_only", "adapter", ...


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
    result: DomainResult

    def __post_init__(self) -> None:  # JSON (and older callers) give a plain mapping
        object.__setattr__(self, "result", _result(self.result))


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    summary_path: str
    results: list[DomainResult]
    stopped: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", [_result(r) for r in self.results])


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
    legacy: dict[str, Any] = getattr(cls, "LEGACY", {})
    values = {**legacy, **{k: v for k, v in d.items() if k in names}}
    if cls is RunStarted and isinstance(values.get("config"), dict):
        values["config"] = KDConfig.from_record(values["config"])
    return cls(**values)


def event_from_json(line: str) -> Event:
    return event_from_dict(json.loads(line))


def null_sink(event: Event) -> None:
    """Discard events (the default when nobody listens)."""


# ---- one renderer for people ------------------------------------------------------------------
PHASE_WORDS = {
    "idle": "idle",
    "build": "building the demo pair",
    "load": "loading models",
    "teacher": "teacher pass",
    "student": "student pass",
    "eval": "evaluating",
}


@dataclass(frozen=True)
class Description:
    """An event in words: the CLI prints `text`; the dashboard logs it styled by `level`."""

    text: str
    level: Level = "info"


def fmt_time(seconds: float | None) -> str:
    """0:41, 3:52, 1:02:03; '--:--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def fmt_loss(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"


def _run_started(e: RunStarted) -> Description:
    c = e.config
    return Description(
        f"run started · {e.teacher} → {e.student} · {len(e.domains)} domain(s) · "
        f"{c.teacher_mode} · T {c.temperature:g} · "
        f"α {c.alpha:g} · r {c.lora_rank} · output {e.output}"
    )


def _phase_started(e: PhaseStarted) -> Description:
    if e.phase == "teacher":
        return Description(f"teacher pass · {e.domain} · {e.total} prompts")
    if e.phase == "student":
        return Description(f"student pass · {e.domain} · {e.total} steps")
    if e.phase == "build":
        return Description(f"building the demo pair (first use) · {e.message}".rstrip(" ·"))
    if e.phase == "load":
        return Description(e.message or "loading models", "dim")
    where = f" · {e.domain}" if e.domain else ""
    return Description(f"{PHASE_WORDS.get(e.phase, e.phase)}{where} {e.message}".strip())


def _progress(e: Progress) -> Description:
    where = f" · {e.domain}" if e.domain else ""
    eta = "" if e.done >= e.total else f" · ETA {fmt_time(e.eta_s)}"
    return Description(
        f"{PHASE_WORDS.get(e.phase, e.phase)}{where}: {e.message} {e.done}/{e.total}{eta}".replace(
            "  ", " "
        ),
        "dim",
    )


def _step(e: Step) -> Description:
    policy = f" · on-policy, sampled {e.sample_tokens_per_second:.0f} tok/s" if e.on_policy else ""
    if e.teacher_tokens_per_second:
        policy += f" · remote teacher {e.teacher_tokens_per_second:.0f} tok/s"
    return Description(
        f"[{e.domain}] step {e.step}/{e.total_steps} · kd {e.kd:.4f} · ce {e.ce:.4f} · "
        f"loss {e.combined:.4f} · lr {e.lr:.1e} · {e.tokens_per_second:.0f} tok/s · "
        f"{e.peak_memory_gb:.2f} GB · ETA {fmt_time(e.eta_s)}{policy}",
        "dim",
    )


def _cache(e: CacheUsed) -> Description:
    how = "reused the cache" if e.hit else "cached"
    return Description(
        f"teacher pass · {e.domain} · {how}: {e.examples} responses, {e.response_tokens} tokens"
    )


def _domain_finished(e: DomainFinished) -> Description:
    r = e.result
    extra = f" · {r.examples_skipped} example(s) skipped" if r.examples_skipped else ""
    return Description(
        f"done {e.domain}: kd {fmt_loss(r.final_kd_loss)} · ce {fmt_loss(r.final_ce_loss)} · "
        f"loss {fmt_loss(r.final_combined_loss)} · {fmt_time(r.training_time_seconds)} · "
        f"{r.adapter_path}{extra}",
        "warning" if r.stopped else "success",
    )


def _run_finished(e: RunFinished) -> Description:
    if e.stopped:
        saved = [c for r in e.results for c in r.checkpoints[-1:]]
        what = f"last checkpoint {saved[-1]}" if saved else "no checkpoint was saved"
        return Description(f"run stopped · {what} · continue with --resume", "warning")
    return Description(
        f"run finished · {len(e.results)} domain(s) · summary {e.summary_path}", "success"
    )


def _eval(e: EvalResult) -> Description:
    figures = " · ".join(f"{k} {v:.4g}" for k, v in e.metrics.items() if isinstance(v, int | float))
    who = f" {e.student}" if e.student else ""
    return Description(f"eval · {e.domain}{who}: {figures}")


def _log(e: Log) -> Description:
    level: Level = e.level if e.level in ("warning", "error", "dim") else "info"  # type: ignore[assignment]
    return Description(e.message, level)


_DESCRIBERS: dict[str, Callable[[Any], Description]] = {
    "run_started": _run_started,
    "phase_started": _phase_started,
    "progress": _progress,
    "step": _step,
    "eval": _eval,
    "checkpoint": lambda e: Description(
        f"{e.domain}: {e.path.rstrip('/').rsplit('/', 1)[-1] or f'checkpoint_{e.step}'} saved"
    ),
    "cache": _cache,
    "domain_finished": _domain_finished,
    "run_finished": _run_finished,
    "run_failed": lambda e: Description(f"run failed: {e.error}", "error"),
    "log": _log,
    "paused": lambda e: Description(
        ("paused" if e.paused else "resumed")
        + (f" at {e.domain} step {e.step}" if e.domain and e.step is not None else ""),
        "warning",
    ),
}


def describe(e: Event) -> Description | None:
    """The event in one line for a person (None: nothing to say)."""
    fn = _DESCRIBERS.get(e.kind)
    return fn(e) if fn else None
