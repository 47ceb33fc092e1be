"""Path completion for Inputs: `Input(suggester=PathSuggester())` completes folders and files
as the user types (→ accepts the grey suggestion)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from textual.suggester import Suggester

MAX_ENTRIES = 2000  # never list a huge folder in full on a keystroke


class PathSuggester(Suggester):
    """Suggests the first entry of the typed folder that starts with the typed name.

    `extra` names (e.g. demo-teacher, cached hub ids) are offered before paths. Folders are
    suggested with a trailing '/' so the next keystroke goes on inside them.
    """

    def __init__(self, dirs_only: bool = False, extra: Iterable[str] = ()) -> None:
        # No cache: the filesystem changes under us (a run writes a new folder).
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only = dirs_only
        self.extra = list(extra)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        for name in self.extra:
            if name.startswith(value) and name != value:
                return name
        return complete_path(value, self.dirs_only)


def complete_path(value: str, dirs_only: bool = False) -> str | None:
    head, _, prefix = value.rpartition("/")
    base = Path(os.path.expanduser(head + "/" if head or value.startswith("/") else "."))
    try:
        entries = []
        with os.scandir(base) as it:
            for n, entry in enumerate(it):
                if n >= MAX_ENTRIES:
                    break
                if entry.name.startswith(prefix) and (
                    prefix.startswith(".") or not entry.name.startswith(".")
                ):
                    is_dir = entry.is_dir()
                    if is_dir or not dirs_only:
                        entries.append(entry.name + ("/" if is_dir else ""))
    except OSError:
        return None
    entries.sort()
    for name in entries:
        suggestion = (head + "/" if head or value.startswith("/") else "") + name
        if suggestion != value:
            return suggestion
    return None
