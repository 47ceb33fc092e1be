"""Packaging promises: console scripts, no Textual in the engine, fast BLAS loaded on Linux."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_engine_never_imports_textual():
    out = _run(
        "import sys, kd_core, kd_core.cli, kd_core.distiller, kd_core.evaluate, "
        "kd_core.train.trainer; print('textual' in sys.modules)"
    )
    assert out == "False"


def test_light_modules_do_not_import_mlx():
    out = _run("import sys, kd_core.events, kd_core.config; print('mlx.core' in sys.modules)")
    assert out == "False"


@pytest.mark.skipif(platform.system() != "Linux", reason="Linux CPU wheel only")
def test_openblas_preloaded_before_mlx():
    out = _run("import kd_core, kd_core.runtime.blas as b; import mlx.core; print(b.loaded_blas)")
    assert "openblas" in out.lower()


@pytest.mark.skipif(platform.system() != "Linux", reason="Linux CPU wheel only")
def test_blas_threads_can_be_set_at_run_time_and_bfs_width_widened():
    # cpu_streams sets one BLAS thread per call while it trains, then restores the count.
    out = _run(
        "import os, kd_core, kd_core.runtime.blas as b; n = b.blas_threads();"
        " p = b.set_blas_threads(1);"
        "print(n == p, b.blas_threads(), b.set_blas_threads(n), b.blas_threads() == n,"
        " os.environ['MLX_BFS_MAX_WIDTH'])"
    )
    assert out == "True 1 1 True 256"
    kept = subprocess.run(
        [sys.executable, "-c", "import os, kd_core; print(os.environ['MLX_BFS_MAX_WIDTH'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**__import__("os").environ, "MLX_BFS_MAX_WIDTH": "7"},
    ).stdout.strip()
    assert kept == "7"  # the user's own setting wins


def test_console_scripts_help():
    bindir = __import__("pathlib").Path(sys.executable).parent
    for script in ("kd", "kd-tui"):
        proc = subprocess.run(
            [str(bindir / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage" in proc.stdout.lower()
