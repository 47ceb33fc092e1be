"""Pause / resume / stop requests for a running distillation (thread-safe).

The trainer checks these between optimiser steps. A stop saves a checkpoint first, so a
later run with resume continues from it. In a child process (`kd distill --events jsonl`)
the same requests arrive as lines on stdin ("pause", "resume", "stop") or as SIGINT/SIGTERM.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path


class RunControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def request_stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        if not self._stop.is_set():
            self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def wait_while_paused(self) -> None:
        while not self._running.wait(timeout=0.2):
            pass

    def follow_stdin(self, stream=None) -> threading.Thread:
        """Read control words from stdin in a daemon thread (child-process mode)."""
        stream = stream or sys.stdin

        def reader() -> None:
            for line in stream:
                word = line.strip().lower()
                if word == "pause":
                    self.pause()
                elif word == "resume":
                    self.resume()
                elif word == "stop":
                    self.request_stop()
            # stdin closed: the parent went away; stop cleanly rather than run orphaned.
            self.request_stop()

        t = threading.Thread(target=reader, name="kd-control", daemon=True)
        t.start()
        return t

    def follow_file(
        self, path: str | Path, interval: float = 0.2, skip_existing: bool = True
    ) -> threading.Thread:
        """Poll a file for control words appended to it (works under mlx.launch, where stdin
        does not reach rank 0). The file may not exist yet; its old lines are ignored unless
        `skip_existing` is False (a file the run itself emptied at its start: everything in
        it was written for this run). A file written anew (`echo stop > file` rather than
        `>>`) is read from its start again."""
        p = Path(path)
        words = {"pause": self.pause, "resume": self.resume, "stop": self.request_stop}

        def read() -> tuple[list[str], tuple[int, int] | None]:
            try:
                st = p.stat()
                return p.read_text(errors="replace").splitlines(), (st.st_ino, st.st_mtime_ns)
            except OSError:
                return [], None

        lines, stamp = read()
        seen = len(lines) if skip_existing else 0

        def poll() -> None:
            nonlocal seen, stamp
            while not self.stop_requested:
                lines, now = read()
                if now is not None and now != stamp and len(lines) <= seen:
                    seen = 0  # rewritten, not appended to: every line in it is new
                stamp = now if now is not None else stamp
                for word in (w.strip().lower() for w in lines[seen:]):
                    words.get(word, lambda: None)()
                seen = max(seen, len(lines)) if lines else seen
                time.sleep(interval)

        t = threading.Thread(target=poll, name="kd-control-file", daemon=True)
        t.start()
        return t
