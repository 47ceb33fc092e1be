"""The built-in demo pair: shipped in the package, or built and cached (see kd_core.demo.build).

The pair built by the default DemoRecipe is checked into the repository as float16
safetensors (kd_core/demo/pair/, with its SHA-256 manifest): training a teacher that writes
the demo language well takes longer than a new user should wait. On first use it is unpacked
once to a float32 copy in the user cache folder (about a second). `kd demo --rebuild` trains
the pair again from the recipe and says whether the bytes match the shipped manifest.
Another recipe (the tests' reduced one) is built on first use and cached.

demo-student-sp (kd_core.demo.sp: the demo student with a SentencePiece-style tokenizer, for
cross-tokenizer distillation) is handled the same way: shipped float16 in
kd_core/demo/student_sp (training it took 1167 s here), unpacked on first use to a
float32 copy beside the pair's, built and cached for any other recipe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from kd_core.demo.build import (
    DemoPair,
    DemoRecipe,
    build_demo_pair,
    differences,
    manifest,
    unpack,
    verify,
)
from kd_core.demo.sp import SP_FOLDER, SP_NAME, SpRecipe, build_sp_student
from kd_core.files.user_dirs import default_cache_dir

SHIPPED = Path(__file__).resolve().parent / "pair"
SHIPPED_SP = Path(__file__).resolve().parent / "student_sp"

_lock = threading.Lock()
BuildProgress = Callable[[str, int, int], None]
_progress_hook: BuildProgress | None = None


def demo_root() -> Path:
    return default_cache_dir() / "demo"


def set_build_progress(hook: BuildProgress | None) -> None:
    """Where a first-use build reports (what, done, total); the distiller sets this."""
    global _progress_hook
    _progress_hook = hook


def _folder(recipe: DemoRecipe) -> Path:
    """The float32 working copy (what the engine loads)."""
    return Path(os.environ.get("KD_DEMO_DIR", demo_root() / recipe.key()))


def _built(folder: Path) -> Path:
    """Where a local build writes its float16 pair (beside the working copy)."""
    return folder.with_name(folder.name + ".built")


def shipped_pair(recipe: DemoRecipe | None = None) -> Path | None:
    """The pair in the package if it is intact and was built from this recipe."""
    recipe = recipe or DemoRecipe()
    if manifest(SHIPPED).get("key") != recipe.key() or not verify(SHIPPED):
        return None
    return SHIPPED


def built_demo_path(name: str, recipe: DemoRecipe | None = None) -> Path | None:
    """The demo model's folder if the pair is ready (unpacking the shipped one if needed,
    about a second); None when it would have to be trained. Never trains."""
    if name == SP_NAME:
        return built_sp_path(None if recipe is None else SpRecipe(recipe))
    recipe = recipe or DemoRecipe()
    folder = _folder(recipe)
    if not verify(folder):
        src = shipped_pair(recipe) or (_built(folder) if verify(_built(folder)) else None)
        if src is None:
            return None
        with _lock:
            if not verify(folder):
                unpack(src, folder)
    return folder / ("teacher" if name == "demo-teacher" else "student")


def ensure_demo_pair(
    recipe: DemoRecipe | None = None,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DemoPair:
    """The demo pair's working copy: unpacked from the shipped or cached build, or trained
    (rebuild=True: always trained, then compared with the shipped manifest)."""
    recipe = recipe or DemoRecipe()
    folder = _folder(recipe)
    say = progress or (lambda msg: None)
    with _lock:
        if not rebuild and verify(folder):
            return DemoPair(folder / "teacher", folder / "student", folder)
        src = None if rebuild else shipped_pair(recipe)
        if src is None:
            src = _built(folder)
            if rebuild or not verify(src):
                _train_pair(src, recipe, say)
            if rebuild:
                _compare_with_shipped(src, recipe, say)
        return unpack(src, folder)


def _reporter(label: str, say: Callable[[str], None]) -> BuildProgress:
    """Progress of a first-use build: to the hook (the distiller's events) and every 10% to
    `say` (the CLI)."""
    last = [-1]

    def report(what: str, done: int, total: int) -> None:
        if _progress_hook:
            _progress_hook(what, done, total)
        pct = done * 100 // total
        if pct != last[0] and pct % 10 == 0:
            last[0] = pct
            say(f"building {label}: {what} {pct}%")

    return report


def _train_pair(dest: Path, recipe: DemoRecipe, say: Callable[[str], None]) -> None:
    build_demo_pair(dest, recipe, _reporter("the demo pair", say))


def _compare_with_shipped(built: Path, recipe: DemoRecipe, say: Callable[[str], None]) -> None:
    if manifest(SHIPPED).get("key") != recipe.key():
        say("no shipped pair for this recipe to compare with")
        return
    diff = differences(built, SHIPPED)
    n = len(manifest(SHIPPED)["files"])
    if not diff:
        say(f"rebuilt pair is bit for bit the shipped one (SHA-256 of all {n} files match)")
    else:
        say(
            f"rebuilt pair differs from the shipped one in {', '.join(diff)} (floating-point "
            "results differ between CPUs and BLAS builds); using the rebuilt pair"
        )


# ---- demo-student-sp ----------------------------------------------------------------------
def _sp_folder(recipe: SpRecipe) -> Path:
    """demo-student-sp's float32 working copy: beside the pair's (KD_DEMO_DIR + "-sp" when
    that names the pair's folder)."""
    pair_dir = os.environ.get("KD_DEMO_DIR")
    if pair_dir:
        return Path(pair_dir + "-sp")
    return demo_root() / recipe.key()


def shipped_sp(recipe: SpRecipe | None = None) -> Path | None:
    """demo-student-sp in the package if it is intact and was built from this recipe."""
    recipe = recipe or SpRecipe()
    if manifest(SHIPPED_SP).get("key") != recipe.key() or not verify(SHIPPED_SP):
        return None
    return SHIPPED_SP


def built_sp_path(recipe: SpRecipe | None = None) -> Path | None:
    """demo-student-sp's folder if it is ready (unpacking the shipped one if needed); None
    when it would have to be trained. Never trains."""
    recipe = recipe or SpRecipe()
    folder = _sp_folder(recipe)
    if not verify(folder):
        src = shipped_sp(recipe) or (_built(folder) if verify(_built(folder)) else None)
        if src is None:
            return None
        with _lock:
            if not verify(folder):
                unpack(src, folder)
    return folder / SP_FOLDER


def ensure_sp_student(
    recipe: SpRecipe | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """demo-student-sp's working copy: unpacked from the shipped or cached build, or trained
    (reported through the same hook as the pair's build)."""
    recipe = recipe or SpRecipe()
    folder = _sp_folder(recipe)
    say = progress or (lambda msg: None)
    with _lock:
        if not verify(folder):
            src = shipped_sp(recipe)
            if src is None:
                src = _built(folder)
                if not verify(src):
                    build_sp_student(src, recipe, _reporter(SP_NAME, say))
            unpack(src, folder)
    return folder / SP_FOLDER


def demo_model_path(name: str) -> Path:
    if name == SP_NAME:
        return ensure_sp_student()
    pair = ensure_demo_pair()
    return pair.teacher if name == "demo-teacher" else pair.student


__all__ = [
    "SHIPPED",
    "SHIPPED_SP",
    "SP_NAME",
    "SpRecipe",
    "ensure_sp_student",
    "built_sp_path",
    "shipped_sp",
    "DemoPair",
    "DemoRecipe",
    "ensure_demo_pair",
    "demo_model_path",
    "built_demo_path",
    "shipped_pair",
    "verify",
]
