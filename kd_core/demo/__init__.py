"""The built-in demo pair, built on first use and cached (see kd_core.demo.build)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from kd_core.demo.build import DemoPair, DemoRecipe, build_demo_pair, verify

_lock = threading.Lock()
BuildProgress = Callable[[str, int, int], None]
_progress_hook: BuildProgress | None = None


def demo_root() -> Path:
    from kd_core.user_dirs import default_cache_dir

    return default_cache_dir() / "demo"


def set_build_progress(hook: BuildProgress | None) -> None:
    """Where a first-use build reports (what, done, total); the distiller sets this."""
    global _progress_hook
    _progress_hook = hook


def _folder(recipe: DemoRecipe) -> Path:
    return Path(os.environ.get("KD_DEMO_DIR", demo_root() / recipe.key()))


def built_demo_path(name: str, recipe: DemoRecipe | None = None) -> Path | None:
    """The demo model's folder if it is built and intact; None otherwise (never builds)."""
    folder = _folder(recipe or DemoRecipe())
    if not verify(folder):
        return None
    return folder / ("teacher" if name == "demo-teacher" else "student")


def ensure_demo_pair(
    recipe: DemoRecipe | None = None,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DemoPair:
    """The cached demo pair, built (or rebuilt if missing or damaged) when needed."""
    recipe = recipe or DemoRecipe()
    folder = _folder(recipe)
    with _lock:
        if not rebuild and verify(folder):
            return DemoPair(folder / "teacher", folder / "student", folder)
        last = [-1]

        def report(what: str, done: int, total: int) -> None:
            if _progress_hook:
                _progress_hook(what, done, total)
            pct = done * 100 // total
            if progress and pct != last[0] and pct % 10 == 0:
                last[0] = pct
                progress(f"building the demo pair: {what} {pct}%")

        return build_demo_pair(folder, recipe, report)


def demo_model_path(name: str) -> Path:
    pair = ensure_demo_pair()
    return pair.teacher if name == "demo-teacher" else pair.student


__all__ = [
    "DemoPair",
    "DemoRecipe",
    "ensure_demo_pair",
    "demo_model_path",
    "built_demo_path",
    "verify",
]
