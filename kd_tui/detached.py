"""The detached event source: runs that outlive the dashboard.

A run is its own process in its own session (`kd distill`, started here or anywhere else)
that owns its output folder (kd_core/run/record.py: lock, run.json, events.jsonl, control).
`DetachedRun` follows such a folder: it replays the event file from its start and then
tails it (a half-written last line waits for its newline), queueing events for the UI
(steps wait for the Train pane's redraw; anything else wakes the UI).
Control words are appended to the folder's control file, which the trainer polls. Closing
the source stops the following, never the run.

Started here, the trainer's stdout and stderr go to `<output>/.kd-run/trainer-*.log` (the
dashboard may be gone before it ends); the source waits until the trainer has taken the
folder (run.json names its pid) before it reads the event file, so a trainer that refuses
(another live run owns the folder, a bad setting) shows its own one-line error, not the
other run's events. A folder whose process is gone without a final event is *crashed*:
the source ends it with RunFailed naming the --resume command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd_core.config import RunSpec
from kd_core.config_file import save_toml
from kd_core.events import Event, Log, Paused, RunFailed, Step, describe, event_from_dict
from kd_core.run.event_file import EventFileReader, skipped_message
from kd_core.run.record import (
    CONTROL_FILE,
    EVENTS_FILE,
    RunRecord,
    damaged_message,
    is_live,
    read_record,
    run_dir,
)
from kd_tui.engine import EXIT_GRACE_S, TERMINAL_EVENTS, one_line_error
from kd_tui.messages import EngineEvent

if TYPE_CHECKING:
    from textual.app import App

POLL_S = 0.1  # how often the event file is read for new lines
LIVE_CHECK_S = 0.5  # how often an attached run's lock is probed while its file is quiet
CLEAN_EXITS = (0, 3)  # done, stopped: the trainer's log holds nothing worth keeping


def detached_command(config: Path, resume: bool = False, processes: int = 1) -> list[str]:
    """`kd distill` for a run the dashboard starts: no stdin, no event stream on stdout
    (the run writes its own event file); quiet text goes to the trainer's log."""
    cmd = [sys.executable, "-m", "kd_core", "distill", "--config", str(config), "--quiet"]
    if resume:
        cmd.append("--resume")
    if processes > 1:
        cmd += ["--distributed", str(processes)]
    return cmd


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def crash_message(record: RunRecord | None) -> str:
    who = f"pid {record.pid} on {record.host}" if record else "its process"
    how = f"; continue with: {record.resume_command}" if record else ""
    return f"the trainer ({who}) ended without a final event{how}"


class DetachedRun:
    """An EventSource over a run folder; one run at a time (a new one needs a new start)."""

    detached = True  # quitting the dashboard can leave the run going

    def __init__(self, app: App, python: str | None = None) -> None:
        self.app = app
        self.python = python
        self.output: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_here = False  # this dashboard started the run (quitting asks)
        self.record: RunRecord | None = None
        self.replay_seconds: float | None = None  # the first read of the file, parsed
        self.replayed_events = 0
        self._lock = threading.Lock()
        self._queue: deque[Event] = deque()
        self._active = False
        self._closed = False
        self._gen = 0  # events of an earlier follow (still winding down) are dropped
        self._owned = False  # the trainer holds the folder: words go to its control file
        self._pending: list[str] = []

    @property
    def running(self) -> bool:
        return self._active

    # ---- starting and attaching ---------------------------------------------------------------
    def _begin(self, output: Path, started_here: bool) -> int:
        if self._active:
            raise RuntimeError("a run is already being followed")
        with self._lock:
            self._gen += 1
            self._active, self._closed = True, False
            self.output, self.started_here = output, started_here
            self._owned, self._pending = not started_here, []
            self.proc, self.returncode, self.record = None, None, None
            self.replay_seconds, self.replayed_events = None, 0
            return self._gen

    def _thread(self, target: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=target, args=args, name="kd-detached", daemon=True).start()

    def start(self, spec: RunSpec, resume: bool = False) -> None:
        output = Path(spec.config.output).expanduser().absolute()
        folder = run_dir(output)
        folder.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix="kd-tui-"))
        processes = int(getattr(getattr(self.app, "state", None), "processes", 1) or 1)
        cmd = detached_command(save_toml(spec, tmpdir / "kd.toml"), resume, processes)
        if self.python:
            cmd[0] = self.python
        fd, log = tempfile.mkstemp(dir=folder, prefix="trainer-", suffix=".log")
        os.close(fd)
        gen = self._begin(output, started_here=True)
        self._thread(self._launch, cmd, tmpdir, Path(log), processes, gen)

    def attach(self, output: Path) -> None:
        """Follow the run in `output` (live, finished or crashed) from its first event."""
        output = Path(output).expanduser().absolute()
        gen = self._begin(output, started_here=False)
        self._thread(self._attach, output, gen)

    def _attach(self, output: Path, gen: int) -> None:
        try:
            self.record = read_record(output)
            if self.record is None:
                # A damaged run.json: the words `kd status` and `kd distill` use for it.
                why = (
                    damaged_message(output) or f"no run in {output} (no {run_dir(output)}/run.json)"
                )
                self._post([RunFailed(why)], gen)
                return
            self._follow(output, self.record.events_offset, gen, None, None)
        except Exception as e:  # never leave the UI waiting on a run it cannot read
            self._post([RunFailed(f"cannot follow {output} ({e.__class__.__name__}: {e})")], gen)

    def _launch(
        self, cmd: list[str], tmpdir: Path | None, log: Path, processes: int, gen: int
    ) -> None:
        assert self.output is not None
        output = self.output
        try:
            before = read_record(output)
            with open(log, "ab") as fh:
                # Its own session: the dashboard's keys and its exit never reach the trainer
                # as signals; it lives on when the dashboard (or the browser tab) is gone.
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=fh,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    start_new_session=True,
                )
            self.proc = proc
            record = self._wait_until_owned(output, proc, before, processes, gen)
            if record is None and proc.poll() is None:
                tmpdir = None  # closed before the trainer read its settings: leave them
                return
            if tmpdir is not None and processes == 1:
                # The trainer has read its settings. (Under mlx.launch the other ranks may
                # not have yet: their copy goes when the launcher ends, in `finally`.)
                shutil.rmtree(tmpdir, ignore_errors=True)
            if record is None:
                if proc.returncode is not None:  # it never took the folder: its own words
                    error = one_line_error(_tail(log), proc.returncode)
                    self._post([RunFailed(error, detail=f"exit status {proc.returncode}")], gen)
                    self.returncode = proc.returncode
                return
            self.record = record
            self._set_owned(gen)
            self._follow(output, record.events_offset, gen, proc, log)
        except Exception as e:
            self._post([RunFailed(f"lost the trainer ({e.__class__.__name__}: {e})")], gen)
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)

    def _wait_until_owned(
        self,
        output: Path,
        proc: subprocess.Popen[bytes],
        before: RunRecord | None,
        processes: int,
        gen: int,
    ) -> RunRecord | None:
        """run.json of our trainer once it holds the folder; None if it exited first."""
        old = (before.pid, before.started) if before else None

        def ours(rec: RunRecord | None) -> bool:
            # Under mlx.launch the owner is rank 0, a grandchild: a new record will do.
            return rec is not None and (
                rec.pid == proc.pid or (processes > 1 and (rec.pid, rec.started) != old)
            )

        while not self._closed and gen == self._gen:
            exited = proc.poll() is not None  # asked first: it may take the folder, then exit
            rec = read_record(output)
            if ours(rec):
                return rec
            if exited:
                return None
            time.sleep(0.05)
        return None

    # ---- following the event file -------------------------------------------------------------
    def _follow(
        self,
        output: Path,
        offset: int,
        gen: int,
        proc: subprocess.Popen[bytes] | None,
        log: Path | None,
    ) -> None:
        reader = _LineReader(run_dir(output) / EVENTS_FILE, offset)
        t0 = time.perf_counter()
        first = reader.read()
        ended = self._emit(first, gen)
        self.replay_seconds, self.replayed_events = time.perf_counter() - t0, len(first)
        if ended:
            self._reap(proc, log)
            return
        checked = time.monotonic()
        while not self._closed and gen == self._gen:
            # Whether the writer is gone is decided *before* the last read: an event written
            # just before it died is still read, then a missing final event means a crash.
            gone = proc.poll() is not None if proc is not None else None
            if gone is None and time.monotonic() - checked > LIVE_CHECK_S:
                gone, checked = not is_live(output), time.monotonic()
            events = reader.read()
            if self._emit(events, gen):
                self._reap(proc, log)
                return
            if gone:
                self._post([self._crashed(output, proc, log)], gen)
                return
            if not events:
                time.sleep(POLL_S)

    def _crashed(
        self, output: Path, proc: subprocess.Popen[bytes] | None, log: Path | None
    ) -> RunFailed:
        record = read_record(output) or self.record
        if proc is not None and log is not None:
            self.returncode = proc.returncode
            why = one_line_error(_tail(log), proc.returncode or 0)
            how = f"; continue with: {record.resume_command}" if record else ""
            return RunFailed(f"{why}{how}", detail=f"log {log}")
        return RunFailed(crash_message(record), detail="crashed")

    def _reap(self, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
        """After the final event: wait (not kill) for our trainer to exit, for its status."""
        if proc is None:
            return
        deadline = time.monotonic() + EXIT_GRACE_S
        while not self._closed and time.monotonic() < deadline:
            try:
                self.returncode = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        if log is not None and self.returncode in CLEAN_EXITS:
            log.unlink(missing_ok=True)

    def _emit(self, events: list[tuple[bool, Event]], gen: int) -> bool:
        """Queue the events; True once the run's final event has been queued. Events of an
        earlier process of the same run (before a --resume) are history: their end and
        pause are shown as log lines, not as this run's state."""
        out: list[Event] = []
        for history, event in events:
            if history and isinstance(event, (*TERMINAL_EVENTS, Paused)):
                d = describe(event)
                event = Log(f"(earlier) {d.text}" if d else event.kind, "dim")
            out.append(event)
            if isinstance(event, TERMINAL_EVENTS):
                break
        self._post(out, gen)
        return any(isinstance(e, TERMINAL_EVENTS) for e in out)

    def _post(self, events: list[Event], gen: int) -> None:
        if not events:
            return
        with self._lock:
            if gen != self._gen or self._closed:
                return
            for event in events:
                if isinstance(event, TERMINAL_EVENTS):
                    if not self._active:
                        return
                    self._active = False
                self._queue.append(event)
        if not all(isinstance(e, Step) for e in events):
            self.app.post_message(EngineEvent(None))  # wake the UI: it drains the queue

    def drain(self) -> list[Event]:
        out: list[Event] = []
        with contextlib.suppress(IndexError):
            while True:
                out.append(self._queue.popleft())
        return out

    # ---- control ------------------------------------------------------------------------------
    def _set_owned(self, gen: int) -> None:
        with self._lock:
            if gen != self._gen:
                return
            self._owned = True
            pending, self._pending = self._pending, []
        for word in pending:
            self._send(word)

    def _send(self, word: str) -> bool:
        with self._lock:
            if not self._active or self.output is None:
                return False
            if not self._owned:
                self._pending.append(word)  # the trainer is not up yet: send it when it is
                return False
            path = run_dir(self.output) / CONTROL_FILE
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(word + "\n")
        except OSError:
            return False
        return True

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop(self) -> None:
        self._send("stop")

    def close(self) -> None:
        """Stop following; the run goes on (the dashboard is quitting or detaching)."""
        with self._lock:
            self._closed = True
            self._active = False


class _LineReader:
    """The events appended to the file since the last read (kd_core's one reader of the event
    file), each marked as history when it starts before `offset` (an earlier process of the
    run). A line that is no event is skipped; the log says how many, once per read."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset = path, offset
        self._lines = EventFileReader(path)
        self._unbuilt = 0  # JSON objects that are no event of ours (an unknown kind, …)
        self._told = 0

    @property
    def skipped(self) -> int:
        return self._lines.skipped + self._unbuilt

    def read(self) -> list[tuple[bool, Event]]:
        out: list[tuple[bool, Event]] = []
        for line in self._lines.read():
            try:
                event = event_from_dict(line.event)
            except TypeError as e:  # a known kind with missing fields: a protocol mismatch
                event = Log(f"unreadable event ({e})", "warning")
            except Exception:  # an unknown kind (a newer kd), or fields of the wrong shape
                self._unbuilt += 1
                continue
            out.append((line.start < self.offset, event))
        if self.skipped > self._told:
            # First in the batch: a final event later in it ends what is shown.
            out.insert(
                0, (False, Log(skipped_message(self.path, self.skipped - self._told), "warning"))
            )
            self._told = self.skipped
        return out
