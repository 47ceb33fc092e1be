"""The one reader of a run's event file (`<output>/.kd-run/events.jsonl`).

`kd status` (kd_core/run/status.py) reads the file's tail; the dashboard (kd_tui/detached.py)
replays it from the start and then follows it. Both read it here, so a line one of them can
read the other can too. The file is written one JSON object per line by the run
(kd_core/run/record.py) but it is a file on disk: a crashed writer leaves a torn line, and
anything else may have been appended. A line that is not a JSON object with a text "kind"
is skipped and counted, never fatal; a half-written last line (no newline yet) waits.

No MLX and no Textual here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAIL_BYTES = 64 * 1024  # what `kd status` reads: the same cost for 10 steps or 1e6


def parse_event_line(line: bytes) -> dict[str, Any] | None:
    """One line as an event mapping, or None when it is not one (not JSON, not an object,
    no text "kind")."""
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):  # not JSON (bad UTF-8 is a ValueError too); [[[[…
        return None
    if isinstance(d, dict) and isinstance(d.get("kind"), str):
        return d
    return None


@dataclass(frozen=True)
class EventLine:
    start: int  # the byte offset where the line begins in the file
    event: dict[str, Any]


class EventFileReader:
    """The complete lines appended since the last read, from byte `pos` on. `skipped` counts
    the non-blank lines that were not events; `first_cut` drops the first line read (when
    `pos` was picked by size, not at a line's start)."""

    def __init__(self, path: Path, pos: int = 0, first_cut: bool = False) -> None:
        self.path, self.pos = Path(path), pos
        self.skipped = 0
        self._partial = b""
        self._cut = first_cut

    def read(self) -> list[EventLine]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos + len(self._partial))
                data = fh.read()
        except OSError:
            return []
        if not data:
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # "" after a final newline; else a line being written
        out: list[EventLine] = []
        for line in lines:
            start, self.pos = self.pos, self.pos + len(line) + 1
            if self._cut:
                self._cut = False
                continue
            if not line.strip():
                continue
            event = parse_event_line(line)
            if event is None:
                self.skipped += 1  # a torn line, or something not written by a run
            else:
                out.append(EventLine(start, event))
        return out


def tail_events(
    path: Path, start: int = 0, tail_bytes: int = TAIL_BYTES
) -> tuple[list[dict[str, Any]], int]:
    """The events in the file's last `tail_bytes` from `start` (where the current process
    began writing), oldest first, and the file's size."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return [], 0
    begin = max(0, min(start, size), size - tail_bytes)
    reader = EventFileReader(path, begin, first_cut=begin > start)
    return [line.event for line in reader.read()], size


def skipped_message(path: Path, count: int) -> str:
    """The log's one line about lines that were not events."""
    lines = "line" if count == 1 else "lines"
    return f"skipped {count} unreadable {lines} of {path}"
