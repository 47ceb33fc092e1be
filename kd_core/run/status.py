"""Where a run stands, read from its folder alone: what `kd status` prints and the dashboard's
Runs pane shows (kd_core/run/record.py writes the files).

The state comes from the lock (held: the process lives), the exit status run.json records
at the end, and the last events: a folder whose process is gone without a final event (no
exit status, no run_finished / run_failed) is *crashed*, and its --resume command is the way
on. Only the file's tail is read: a status costs the same for a 10-step or a 1e6-step run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_core.events import fmt_loss, fmt_time
from kd_core.models.identity import SHORT
from kd_core.run.event_file import parse_event_line, tail_events
from kd_core.run.record import (
    CONTROL_FILE,
    EVENTS_FILE,
    RUN_DIR,
    RunRecord,
    damaged_message,
    is_live,
    read_record,
    record_damage,
    run_dir,
)

TAIL_BYTES = 64 * 1024
HEAD_BYTES = 256 * 1024  # run_started follows the build and load events, early in the file
MAX_CHILDREN = 400
STATES = ("running", "paused", "finished", "stopped", "failed", "crashed")
EXIT_WORDS = {0: "finished", 3: "stopped"}


@dataclass(frozen=True)
class RunPair:
    """The models a run uses, as its run_started event names them."""

    teacher: str
    teacher_weights: str  # kd_core/models/identity.py fingerprint ("not recorded": an older kd)
    student: str
    student_weights: str

    def describe(self) -> str:
        return (
            f"teacher {self.teacher} ({self.teacher_weights[:SHORT]}) -> "
            f"student {self.student} ({self.student_weights[:SHORT]})"
        )


@dataclass
class RunState:
    output: Path
    record: RunRecord
    state: str  # one of STATES
    live: bool
    last_step: dict[str, Any] | None  # the last step event, as JSON
    error: str  # the run_failed event's line, if any
    events_bytes: int
    pair: RunPair | None  # from the run_started event; None before the models are found

    @property
    def ended(self) -> bool:
        return not self.live


def _state(live: bool, record: RunRecord, events: list[dict[str, Any]]) -> str:
    if live:
        paused = False
        for e in events:  # a step after Paused(True) means it resumed
            if e.get("kind") == "paused":
                paused = bool(e.get("paused"))
            elif e.get("kind") == "step":
                paused = False
        return "paused" if paused else "running"
    if record.exit_status is not None:
        return EXIT_WORDS.get(record.exit_status, "failed")
    for e in reversed(events):
        if e.get("kind") == "run_finished":
            return "stopped" if e.get("stopped") else "finished"
        if e.get("kind") == "run_failed":
            return "failed"
    return "crashed"


def read_state(output: str | os.PathLike[str]) -> RunState | None:
    """The run in this output folder, or None when the folder holds no run record."""
    out = Path(output).expanduser()
    record = read_record(out)
    if record is None:
        return None
    live = is_live(out)
    events, size = tail_events(run_dir(out) / EVENTS_FILE, record.events_offset, TAIL_BYTES)
    last_step = next((e for e in reversed(events) if e.get("kind") == "step"), None)
    failed = next((e for e in reversed(events) if e.get("kind") == "run_failed"), None)
    state = _state(live, record, events)
    error = str(failed.get("error", "")) if failed and state == "failed" else ""
    pair = read_pair(run_dir(out) / EVENTS_FILE, record.events_offset)
    return RunState(out, record, state, live, last_step, error, size, pair)


def read_pair(path: Path, start: int = 0) -> RunPair | None:
    """Which teacher and student the run uses, from its run_started event (near the start of
    the current process's part of the event file), with each one's weights fingerprint."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            head = fh.read(HEAD_BYTES)
    except OSError:
        return None
    for line in head.split(b"\n"):
        d = parse_event_line(line)  # the one reading of an event line (run/event_file.py)
        if d is not None and d["kind"] == "run_started":
            return RunPair(
                str(d.get("teacher")),
                str(d.get("teacher_weights") or "not recorded"),
                str(d.get("student")),
                str(d.get("student_weights") or "not recorded"),
            )
    return None


def find_states(path: str | os.PathLike[str]) -> list[RunState]:
    """The run in `path`, or else the runs in its sub-folders (one level), newest first."""
    p = Path(path).expanduser()
    own = read_state(p)
    if own is not None:
        return [own]
    states = [s for c in _run_folders(p) if (s := read_state(c)) is not None]
    states.sort(key=lambda s: s.record.started, reverse=True)
    return states


def _run_folders(p: Path) -> list[Path]:
    try:
        return sorted(c for c in p.iterdir() if (c / RUN_DIR).is_dir())[:MAX_CHILDREN]
    except OSError:
        return []


def find_damaged(path: str | os.PathLike[str]) -> list[str]:
    """What to say of the folders find_states skips because their run.json is damaged (the
    same line `kd distill` refuses such a folder with): `path`'s own, or its sub-folders'."""
    p = Path(path).expanduser()
    if read_record(p) is not None:
        return []
    folders = [p] if record_damage(p) is not None else _run_folders(p)
    return [m for f in folders if (m := damaged_message(f)) is not None]


def status_lines(s: RunState) -> list[str]:
    """The facts of one run for a person at a terminal (`kd status`)."""
    r = s.record
    lines = [f"{s.output}: {s.state} · pid {r.pid} on {r.host} · started {r.started}"]
    if r.ended:
        lines[0] += f" · ended {r.ended} (exit status {r.exit_status})"
    if s.pair is not None:
        lines.append(f"  {s.pair.describe()}")
    if (e := s.last_step) is not None:
        lines.append(
            f"  [{e.get('domain')}] step {e.get('step')}/{e.get('total_steps')} · "
            f"kd {fmt_loss(e.get('kd'))} · ce {fmt_loss(e.get('ce'))} · "
            f"loss {fmt_loss(e.get('combined'))} · {float(e.get('tokens_per_second') or 0):.0f} "
            f"tok/s · elapsed {fmt_time(e.get('elapsed_s'))}"
            + (f" · ETA {fmt_time(e.get('eta_s'))}" if s.live else "")
        )
    if s.error:
        lines.append(f"  error: {s.error}")
    events = run_dir(s.output) / EVENTS_FILE
    lines.append(f"  events {events} ({s.events_bytes:,} bytes)")
    if s.live:
        control = run_dir(s.output) / CONTROL_FILE
        lines.append(f"  watch: kd-tui --attach {s.output} · stop: echo stop >> {control}")
    elif s.state in ("crashed", "stopped", "failed"):
        why = "the process died without a final event" if s.state == "crashed" else s.state
        lines.append(f"  {why}; continue with: {r.resume_command}")
    return lines
