"""Event sources: where the dashboard's engine events come from.

`TrainerProcess` runs the real trainer as a child process (`kd distill --events jsonl
--control-stdin`), never in a thread of the UI process: MLX arrays belong to the thread
that built them, a trainer thread made the process abort at exit, and a child isolates
crashes and out-of-memory kills (docs/ARCHITECTURE.md). Its stdout is the JSON-lines event protocol,
read line by line in a Textual thread worker and posted to the app as `EngineEvent`s
(`post_message` is thread-safe; `call_from_thread` would block the reader on the UI).
Control words go the other way on the child's stdin. Step events, the bulk of the stream,
are queued without waking the UI: it takes them when it redraws (a few times a second);
every other event wakes it at once, after the steps before it (order is kept).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kd_core.config import RunSpec, save_toml
from kd_core.events import (
    Event,
    Log,
    RunFailed,
    RunFinished,
    Step,
    event_from_json,
)
from kd_tui.messages import EngineEvent

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


def trainer_command(
    config_path: Path, resume: bool = False, processes: int = 1, control_file: Path | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "kd_core",
        "distill",
        "--events",
        "jsonl",
        "--control-stdin",
        "--config",
        str(config_path),
    ]
    if resume:
        cmd.append("--resume")
    if processes > 1:
        # A local data-parallel run under mlx.launch: rank 0's events come through its
        # stdout; control words reach rank 0 through a file (stdin does not).
        cmd += ["--distributed", str(processes)]
        if control_file is not None:
            cmd += ["--control-file", str(control_file)]
    return cmd


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


class TrainerProcess:
    """The real trainer in a child process; one run at a time.

    The terminal event (RunFinished/RunFailed) is shown as soon as the trainer reports it;
    the process may take a second more to exit. A new start waits for the old process to be
    gone (in the worker, not in the UI) before it launches the next one.
    """

    def __init__(self, app: App, python: str | None = None) -> None:
        self.app = app
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._lock = threading.Lock()  # guards proc, pending words and closing
        self._pending: list[str] = []  # control words sent before the child was up
        self._tmpdir: Path | None = None
        self._active = False  # from start() until the terminal event
        self._closed = False
        self._run_id = 0  # events of an older run (still exiting) are dropped
        self._queue: deque[Event] = deque()  # every event, in order; the UI drains it
        self._control_file: Path | None = None  # set for multi-process runs

    @property
    def running(self) -> bool:
        return self._active

    def start(self, spec: RunSpec, resume: bool = False) -> None:
        if self._active:
            raise RuntimeError("a run is already in progress")
        tmpdir = Path(tempfile.mkdtemp(prefix="kd-tui-"))
        processes = int(getattr(getattr(self.app, "state", None), "processes", 1) or 1)
        self._control_file = tmpdir / "control" if processes > 1 else None
        cmd = trainer_command(
            save_toml(spec, tmpdir / "kd.toml"), resume, processes, self._control_file
        )
        if self.python:
            cmd[0] = self.python
        self._active = True
        self._pending.clear()
        self._run_id += 1
        run_id = self._run_id
        self.app.run_worker(
            lambda: self._run(cmd, tmpdir, run_id),
            name="kd-trainer",
            group="kd-engine",
            thread=True,
            exit_on_error=False,
        )

    # ---- the worker thread ------------------------------------------------------------------
    def drain(self) -> list[Event]:
        out: list[Event] = []
        with contextlib.suppress(IndexError):
            while True:
                out.append(self._queue.popleft())
        return out

    def _post(self, event: Event, run_id: int) -> None:
        with self._lock:
            if run_id != self._run_id:
                return  # a previous run's last words, arriving after a new start
            if isinstance(event, TERMINAL_EVENTS):
                if not self._active:
                    return  # one terminal event per start
                self._active = False
            self._queue.append(event)
        if not isinstance(event, Step):
            self.app.post_message(EngineEvent(None))  # wake the UI: it drains the queue

    def _run(self, cmd: list[str], tmpdir: Path, run_id: int) -> None:
        try:
            self._wait_for_previous()
            with self._lock:
                if self._closed:
                    return
                # A new session: keys typed into the dashboard (or a terminal Ctrl-C) never
                # reach the trainer as signals; it is controlled through stdin only.
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                    bufsize=1,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    start_new_session=True,
                )
                self.proc, self.returncode = proc, None
                self.stderr_tail.clear()
                pending, self._pending = self._pending, []
            for word in pending:
                self._send(word)
            self._follow(proc, run_id)
        except Exception as e:  # never leave the UI waiting for a run that is gone
            self._post(RunFailed(f"lost the trainer ({e.__class__.__name__}: {e})"), run_id)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _wait_for_previous(self) -> None:
        old = self.proc
        if old is not None and old.poll() is None:
            try:
                old.wait(timeout=EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                self._kill(old)
                old.wait()

    def _follow(self, proc: subprocess.Popen[str], run_id: int) -> None:
        assert proc.stdout is not None
        # stderr has its own reader so a chatty child never blocks on a full pipe.
        stderr_reader = threading.Thread(
            target=self._read_stderr, args=(proc,), name="kd-trainer-stderr", daemon=True
        )
        stderr_reader.start()
        reaper: threading.Timer | None = None
        for line in proc.stdout:
            text = line.strip()
            if not text:
                continue
            try:
                event = event_from_json(text)
            except ValueError:
                # Something other than the protocol reached stdout (a library's print):
                # show it in the log rather than lose it or crash.
                event = Log(text[:500], "warning")
            except TypeError as e:  # a known kind with missing fields: a protocol mismatch
                event = Log(f"unreadable event ({e})", "warning")
            if isinstance(event, TERMINAL_EVENTS) and reaper is None:
                # A child that hangs after its last word is killed rather than waited on.
                reaper = threading.Timer(EXIT_GRACE_S, self._kill, args=(proc,))
                reaper.daemon = True
                reaper.start()
            self._post(event, run_id)
        returncode = proc.wait()
        if reaper is not None:
            reaper.cancel()
        if run_id == self._run_id:
            self.returncode = returncode
        stderr_reader.join(timeout=5)  # so the last stderr line is the child's final word
        if returncode == 0:
            error = "the trainer ended without reporting a result"
        else:
            error = one_line_error(list(self.stderr_tail), returncode)
        self._post(RunFailed(error, detail=f"exit status {returncode}"), run_id)  # if none came

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(OSError):
            proc.kill()

    # ---- control (UI thread) ----------------------------------------------------------------
    def _send(self, word: str) -> bool:
        with self._lock:
            proc = self.proc
            if self._active and (
                proc is None or proc.returncode is not None or proc.poll() is not None
            ):
                self._pending.append(word)  # the child is not up yet: send it when it is
                return False
            if proc is None or proc.stdin is None:
                return False
            try:
                if self._control_file is not None:  # distributed: rank 0 polls this file
                    with open(self._control_file, "a", encoding="utf-8") as fh:
                        fh.write(word + "\n")
                proc.stdin.write(word + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
        return True

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop(self) -> None:
        self._send("stop")

    def close(self) -> None:
        """The app is quitting: kill the child now (a graceful stop would outlive the UI)."""
        with self._lock:
            self._closed = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
