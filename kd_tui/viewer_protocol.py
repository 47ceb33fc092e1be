"""The Viewer's worker protocol: typed requests and replies, one JSON object per line.

The dashboard (kd_tui/inference.py) writes requests to the worker (kd_tui/infer_worker.py)
and reads its replies; both build and parse them here, so neither side handles raw dicts.
Same pattern as kd_core/events.py: frozen dataclasses with a `kind` ClassVar, `to_json()`, and
`reply_from_json()` / `request_from_json()` that rebuild the right class. Nothing here imports
Textual or MLX (the worker imports this before it loads MLX, and it must stay cheap).

Wire format (unchanged from the dict protocol): a request names its kind in "op", a reply in
"type"; every reply carries the "id" of the request it answers (None: no request, e.g. ready).

    generate -> status, token (interleaved over slots), done | error (per slot), finished
    inspect  -> status, error (per slot that failed), inspection
    cancel   -> (the running generation's slots end "cancelled"); cancelled if none ran
    shutdown -> the worker exits
    any request that fails as a whole -> error with slot None

Stable contract: fields may be added (with defaults); none are renamed or removed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypedDict

FinishReason = Literal["stop", "length", "cancelled"]


# ---- shared pieces ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One column of the Viewer: a model (name or folder) with an optional adapter folder."""

    name: str
    model: str
    adapter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, value: Slot | dict[str, Any]) -> Slot:
        if isinstance(value, Slot):
            return value
        return cls(str(value["name"]), str(value["model"]), value.get("adapter"))


class SlotView(TypedDict, total=False):
    """One model's view of one position of the inspected answer."""

    top: list[list[Any]]  # [[token label, probability], ...], most probable first
    p_token: float | None  # probability of the answer's own token (None: not in its ids)
    kl: float | None  # KL(reference || this slot); None for the reference or another vocab
    agree: bool  # top-1 equals the reference's top-1


class Position(TypedDict):
    """One position of the inspected answer: its token and every slot's view of it."""

    index: int
    token: str
    slots: dict[str, SlotView]


# ---- requests (dashboard -> worker) ----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Request:
    kind: ClassVar[str] = "request"
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def _slots(values: list[Any]) -> list[Slot]:
    return [Slot.from_any(v) for v in values]


@dataclass(frozen=True, kw_only=True)
class Generate(Request):
    """Every slot answers `prompt`, one token per slot in turn (side by side)."""

    kind: ClassVar[str] = "generate"
    prompt: str
    slots: list[Slot]
    temperature: float = 0.7
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:  # JSON gives plain mappings
        object.__setattr__(self, "slots", _slots(self.slots))


@dataclass(frozen=True, kw_only=True)
class Inspect(Request):
    """Top-k of every slot at each position of `answer` (the reference slot's token ids,
    teacher-forced); the first slot is the reference."""

    kind: ClassVar[str] = "inspect"
    prompt: str
    answer: list[int]
    slots: list[Slot]
    top_k: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", _slots(self.slots))


@dataclass(frozen=True, kw_only=True)
class Cancel(Request):
    """Stop the running generation (its slots end with finish_reason "cancelled")."""

    kind: ClassVar[str] = "cancel"


@dataclass(frozen=True, kw_only=True)
class Shutdown(Request):
    kind: ClassVar[str] = "shutdown"


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.kind: cls for cls in (Generate, Inspect, Cancel, Shutdown)
}


def request_from_dict(d: dict[str, Any]) -> Request:
    """The request `d` describes; ValueError names what is wrong (unknown op, bad field)."""
    cls = REQUEST_TYPES.get(d.get("op", ""))
    if cls is None:
        raise ValueError(f"unknown op {d.get('op')!r}; use generate, inspect, cancel or shutdown")
    return _build(cls, d)


def request_from_json(line: str) -> Request:
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not an object")
    return request_from_dict(d)


# ---- replies (worker -> dashboard) -----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Reply:
    kind: ClassVar[str] = "reply"
    id: int | None = None  # the request answered (None: not an answer to one)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class Ready(Reply):
    """The worker started and reads requests."""

    kind: ClassVar[str] = "ready"
    pid: int = 0


@dataclass(frozen=True, kw_only=True)
class Status(Reply):
    """What the worker is doing now (loading a model, building the demo pair, generating)."""

    kind: ClassVar[str] = "status"
    message: str


@dataclass(frozen=True, kw_only=True)
class Token(Reply):
    """One generated token of one slot. `token` None: text without a token (the
    detokenizer's final flush when generation stopped on EOS)."""

    kind: ClassVar[str] = "token"
    slot: str
    text: str
    token: int | None = None


@dataclass(frozen=True, kw_only=True)
class Done(Reply):
    """One slot finished: every token id and the whole text."""

    kind: ClassVar[str] = "done"
    slot: str
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason = "stop"


@dataclass(frozen=True, kw_only=True)
class ErrorReply(Reply):
    """One line a user can act on. With `slot`: that slot failed and the others go on;
    without: the whole request failed (or a line could not be read)."""

    kind: ClassVar[str] = "error"
    message: str
    slot: str | None = None


@dataclass(frozen=True, kw_only=True)
class Finished(Reply):
    """The generation is over (every slot sent its done or error)."""

    kind: ClassVar[str] = "finished"


@dataclass(frozen=True, kw_only=True)
class Cancelled(Reply):
    """A cancel arrived when no generation was running."""

    kind: ClassVar[str] = "cancelled"


@dataclass(frozen=True, kw_only=True)
class Inspection(Reply):
    """The token inspector's answer: one Position per answer token."""

    kind: ClassVar[str] = "inspection"
    positions: list[Position] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class WorkerExit(Reply):
    """Made by the client, never sent by the worker: the worker process ended (`message`
    names its last stderr line); the next request starts a fresh one."""

    kind: ClassVar[str] = "exit"
    message: str


REPLY_TYPES: dict[str, type[Reply]] = {
    cls.kind: cls
    for cls in (
        Ready,
        Status,
        Token,
        Done,
        ErrorReply,
        Finished,
        Cancelled,
        Inspection,
        WorkerExit,
    )
}


def reply_from_dict(d: dict[str, Any]) -> Reply:
    cls = REPLY_TYPES.get(d.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown reply type {d.get('type')!r}")
    return _build(cls, d)


def reply_from_json(line: str) -> Reply:
    """The reply on one line. Never raises: a line that is not a reply (bad JSON, unknown
    type, missing field) becomes a one-line ErrorReply, so one bad line cannot stop the
    reader."""
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        return reply_from_dict(d)
    except (ValueError, TypeError, KeyError) as e:
        text = line.strip()
        shown = text if len(text) <= 80 else text[:77] + "..."
        return ErrorReply(message=f"viewer worker sent an unreadable reply ({e}): {shown!r}")


def _build(cls: type[Any], d: dict[str, Any]) -> Any:
    """cls from the mapping's known fields (unknown keys are ignored: a newer peer may add
    fields). A missing required field is a TypeError, reported as ValueError."""
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in names})
    except TypeError as e:
        raise ValueError(f"{cls.kind}: {e}") from None
