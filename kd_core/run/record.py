"""A run owns its output folder: the record in `<output>/.kd-run/` that outlives any viewer.

    <output>/.kd-run/lock          an exclusive flock held for the run's life
    <output>/.kd-run/run.json      pid, host, start time, argv, cwd, the --resume command;
                                   `ended` and `exit_status` once the process is done
    <output>/.kd-run/events.jsonl  every typed event, in order, as it happens (the same JSON
                                   lines as `--events jsonl`); a fresh run truncates it, a
                                   --resume appends (run.json's `events_offset` is where the
                                   current process's events begin)
    <output>/.kd-run/control       pause / resume / stop words appended by anyone
    <output>/.kd-run/kd.toml       the run's resolved settings (what --resume re-reads)

Why flock: the kernel drops it when the process dies however it dies (SIGKILL, out of
memory), so a stale lock never blocks a later run, and "is the lock held?" is the liveness
test for a viewer (`is_live`), whatever host wrote the pid. A leading dot keeps the folder
out of the domain namespace (domain names start with a letter or digit).

No MLX and no Textual here: `kd status` and the dashboard read these files too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from kd_core.events import Event, describe, event_from_dict
from kd_core.files.atomic import atomic_write_json
from kd_core.files.bounded_read import RECORD_MAX_BYTES, BoundedReadError, read_bounded
from kd_core.run.event_file import tail_events

RUN_DIR = ".kd-run"
LOCK_FILE = "lock"
RECORD_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
CONTROL_FILE = "control"
CONFIG_FILE = "kd.toml"
LOCK_WAIT_S = 1.0  # a viewer's liveness probe holds the lock for microseconds: retry past it


class RunLockedError(ValueError):
    """Another live process owns the output folder (one line; `kd distill` exits 2)."""


class DamagedRecordError(RunLockedError):
    """The folder holds a run whose run.json cannot be read: refused like a live run's
    folder, since starting afresh would truncate that run's events (one line; exit 2)."""


def run_dir(output: str | os.PathLike[str]) -> Path:
    return Path(output).expanduser() / RUN_DIR


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """run.json: who owns (or owned) the folder, and how to continue its run."""

    pid: int
    host: str
    started: str
    output: str
    argv: list[str] = field(default_factory=list)
    cwd: str = ""
    resume_command: str = ""
    events_offset: int = 0
    ended: str | None = None
    exit_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# run.json's fields that later code relies on, with the types it relies on.
RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "pid": int,
    "host": str,
    "started": str,
    "output": str,
    "resume_command": str,
    "events_offset": int,
    "exit_status": (int, type(None)),
}


def _load_record(output: str | os.PathLike[str]) -> tuple[RunRecord | None, str | None]:
    """run.json as a record, or (None, why it is damaged); (None, None) when there is none."""
    path = run_dir(output) / RECORD_FILE
    try:
        data = json.loads(read_bounded(path, RECORD_MAX_BYTES, "a run record"))
    except FileNotFoundError:
        return None, None
    except BoundedReadError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read it: {e.strerror or e.__class__.__name__}"
    except (ValueError, RecursionError):
        return None, "not valid JSON"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    for name, kind in RECORD_TYPES.items():
        if name in data and (isinstance(data[name], bool) or not isinstance(data[name], kind)):
            return None, f"{name!r} is {json.dumps(data[name])[:40]}"
    try:
        return RunRecord.from_dict(data), None
    except TypeError:
        missing = [f.name for f in fields(RunRecord) if f.name not in data]
        return None, f"no {', '.join(missing[:3])}"


def read_record(output: str | os.PathLike[str]) -> RunRecord | None:
    """run.json of the folder, or None when there is none (or it is damaged: record_damage
    says why)."""
    return _load_record(output)[0]


def record_damage(output: str | os.PathLike[str]) -> str | None:
    """Why the folder's run.json cannot be read; None when it reads or there is none."""
    return _load_record(output)[1]


def is_live(output: str | os.PathLike[str]) -> bool:
    """Whether a process holds the folder's lock now (a shared probe, released at once)."""
    try:
        fd = os.open(run_dir(output) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)  # closing drops a shared lock we got
    return False


def locked_message(output: Path) -> str:
    if (damaged := damaged_message(output, live=True)) is not None:
        return damaged
    rec = read_record(output)
    who = f"pid {rec.pid} on {rec.host}, started {rec.started}" if rec else "another process"
    return (
        f"output: {output} is in use by a live run ({who}); watch it with "
        f"`kd status {output}` or `kd-tui --attach {output}`, stop it, or use another --output"
    )


def _last_event(output: Path) -> str:
    events, _ = tail_events(run_dir(output) / EVENTS_FILE)
    if not events:
        return "none"
    try:
        d = describe(event_from_dict(events[-1]))
    except Exception:  # an unknown kind or odd fields: its kind says enough
        d = None
    return d.text if d else str(events[-1]["kind"])


def damaged_message(output: str | os.PathLike[str], live: bool | None = None) -> str | None:
    """What `kd status` and `kd distill` say of a folder whose run.json is damaged (None when
    it is not): what is known (the lock, the last event) and what to do. `live`: whether a
    process holds the lock, when the caller knows better than a probe (it holds it itself)."""
    out = Path(output).expanduser().absolute()
    why = record_damage(out)
    if why is None:
        return None
    folder = run_dir(out)
    if live is None:
        live = is_live(out)
    if live:
        lock = "its lock is held (a process still runs there)"
        todo = f"stop it (echo stop >> {folder / CONTROL_FILE}) or let it end"
    else:
        lock = "its lock is free (no process runs there)"
        todo = f"move {folder / RECORD_FILE} away to start a new run here"
        if (folder / CONFIG_FILE).is_file():
            todo = f"continue it with `{resume_command(out)}`, or {todo}"
    return (
        f"output: {out} holds a run whose record {folder / RECORD_FILE} is damaged ({why}); "
        f"{lock}; last event: {_last_event(out)}; {todo}, or use another --output"
    )


def acquire_lock(output: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """The folder's exclusive lock (a file descriptor to keep open), or RunLockedError."""
    folder = run_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunLockedError(locked_message(output)) from None
            time.sleep(0.05)


def resume_command(output: Path, extra: list[str] | None = None) -> str:
    """The command that continues this folder's run from its latest checkpoint."""
    config = str(run_dir(output) / CONFIG_FILE)
    cmd = [sys.executable, "-m", "kd_core", "distill", "--config", config]
    return shlex.join([*cmd, *(extra or []), "--resume"])


REFUSED_STATUS = 2  # kd distill: bad input


class RunWriter:
    """Owns the output folder for one process: lock, run.json, the event file.

    Call it with each event (it is an EventSink); `close(status)` records the exit status
    and releases the lock. Events are flushed one by one so a viewer sees them at once;
    there is no fsync per event (the page cache is shared by every reader on the host).
    """

    def __init__(self, output: Path, fd: int, record: RunRecord, events: TextIO) -> None:
        self.output, self._fd, self.record, self._events = output, fd, record, events
        self._closed = False
        self.created_output = False  # set by the opener: this run made the output folder

    @classmethod
    def open(
        cls, output: str | os.PathLike[str], argv: list[str], resume: bool, extra: list[str]
    ) -> RunWriter:
        """Take the folder (RunLockedError when a live run has it) and start its record."""
        out = Path(output).expanduser().absolute()
        fd = acquire_lock(out)
        try:
            folder = run_dir(out)
            _check_record(out, resume)
            (folder / CONTROL_FILE).write_text("")  # words sent to an earlier run are void
            path = folder / EVENTS_FILE
            size = path.stat().st_size if resume and path.exists() else 0
            torn = bool(size) and not _ends_with_newline(path)
            # run.json first: a follower that finds the event file also finds the record.
            record = RunRecord(
                pid=os.getpid(),
                host=socket.gethostname(),
                started=now_iso(),
                output=str(out),
                argv=list(argv),
                cwd=os.getcwd(),
                resume_command=resume_command(out, extra),
                events_offset=size + int(torn),
            )
            atomic_write_json(folder / RECORD_FILE, record.to_dict())
            # Held open for the run's life (closed in close()): no context manager.
            events = open(path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
            if torn:
                events.write("\n")  # a crashed writer's half line stays alone on its line
                events.flush()
        except BaseException:
            os.close(fd)
            raise
        return cls(out, fd, record, events)

    @property
    def control_path(self) -> Path:
        return run_dir(self.output) / CONTROL_FILE

    @property
    def config_path(self) -> Path:
        return run_dir(self.output) / CONFIG_FILE

    def __call__(self, event: Event) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError, ValueError):  # a full disk must not kill the run
            self._events.write(event.to_json() + "\n")
            self._events.flush()

    def close(self, exit_status: int) -> None:
        if self._closed:
            return
        self._closed = True
        self.record.ended = now_iso()
        self.record.exit_status = exit_status
        with contextlib.suppress(OSError):
            self._events.close()
            atomic_write_json(run_dir(self.output) / RECORD_FILE, self.record.to_dict())
        os.close(self._fd)  # releases the lock
        if exit_status == REFUSED_STATUS and self.created_output:
            self._discard()

    def _discard(self) -> None:
        """A run refused on its input (status 2) before it trained writes nothing: the output
        folder it made, holding only its own record, goes again."""
        with contextlib.suppress(OSError):
            if {p.name for p in self.output.iterdir()} <= {RUN_DIR}:
                shutil.rmtree(self.output)


def _check_record(output: Path, resume: bool) -> None:
    """A damaged run.json (the caller holds the lock): a fresh run is refused, since it would
    truncate that run's events; a --resume continues it, the damaged file kept beside."""
    message = damaged_message(output, live=False)
    if message is None:
        return
    if not resume:
        raise DamagedRecordError(message)
    record = run_dir(output) / RECORD_FILE
    with contextlib.suppress(OSError):
        os.replace(record, record.with_name(RECORD_FILE + ".damaged"))


def _ends_with_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
    except OSError:
        return True
