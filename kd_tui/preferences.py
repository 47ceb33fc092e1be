"""The dashboard's remembered preferences: the theme, and the output folders it has run or
followed.

Kept in `theme.json` and `recent.json` under platformdirs' user config folder for "kd"
(`KD_CONFIG_DIR` overrides it, e.g. in tests). A missing or unreadable file means the defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from kd_core.files.atomic import atomic_write_json
from themes import DEFAULT_THEME

PREFS_FILE = "theme.json"


def config_dir() -> Path:
    """Where the dashboard keeps its preferences (KD_CONFIG_DIR overrides it)."""
    env = os.environ.get("KD_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("kd"))


def load_theme_name(default: str = DEFAULT_THEME) -> str:
    """The remembered theme name, or `default` when none is stored or the file is unreadable."""
    try:
        data = json.loads((config_dir() / PREFS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    name = data.get("theme") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else default


def save_theme_name(name: str) -> Path | None:
    """Remember the theme (atomic write). Returns the path, or None if it cannot be written:
    a read-only config folder must never break the dashboard."""
    path = config_dir() / PREFS_FILE
    try:
        atomic_write_json(path, {"theme": name})
    except OSError:
        return None
    return path


# ---- output folders the dashboard has run or followed (the Runs pane scans them) ----------
RECENT_FILE = "recent.json"
MAX_RECENT = 12


def recent_outputs() -> list[Path]:
    """Output folders of runs started or attached here, newest first ([] if none stored)."""
    try:
        data = json.loads((config_dir() / RECENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = data.get("outputs") if isinstance(data, dict) else None
    return [Path(p) for p in items or [] if isinstance(p, str) and p][:MAX_RECENT]


def remember_output(path: Path) -> None:
    """Put `path` first in the recent outputs; a read-only config folder is not an error."""
    p = str(Path(path).expanduser().absolute())
    outputs = [p] + [str(o) for o in recent_outputs() if str(o) != p]
    with contextlib.suppress(OSError):
        atomic_write_json(config_dir() / RECENT_FILE, {"outputs": outputs[:MAX_RECENT]})
