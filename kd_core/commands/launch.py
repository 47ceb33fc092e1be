"""A data-parallel `kd distill` under mlx.launch, and the status it ends with."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from kd_core.commands.exits import EXIT_BAD_INPUT, EXIT_FAILED, UsageError

LAUNCH_GRACE_S = 20.0
LAUNCH_FLAGS = ("--distributed", "--hostfile", "--backend")


def launch_distributed(args: argparse.Namespace) -> int:
    """Re-run this command under mlx.launch; rank 0's output is the run's output.

    mlx.launch's own exit status does not reflect a failed rank, so we read the ranks'
    one-line errors as they pass through and decide the status from them.
    """
    if args.distributed is not None and args.distributed < 1:
        raise UsageError(f"--distributed: expected a whole number from 1, got {args.distributed}")
    where = ["--hostfile", args.hostfile] if args.hostfile else ["-n", str(args.distributed)]
    cmd = [str(_launcher()), "--backend", args.backend, *where, "--"]
    cmd += [sys.executable, "-m", "kd_core", *inner_arguments(args.argv)]
    # Rank 0 records the run's --resume command: it must launch the same way again.
    launch = ["--backend", args.backend]
    if args.hostfile:
        launch += ["--hostfile", str(Path(args.hostfile).absolute())]
    else:
        launch += ["--distributed", str(args.distributed)]
    env = dict(os.environ, KD_LAUNCH_ARGS=shlex.join(launch))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    status = _relay_ranks(proc)
    rc = proc.wait()
    return status or (EXIT_FAILED if rc else 0)


def _launcher() -> Path:
    """mlx.launch beside this Python (a virtual environment), else on PATH."""
    launcher = Path(sys.executable).parent / "mlx.launch"
    if launcher.exists():
        return launcher
    found = shutil.which("mlx.launch")
    if not found:
        raise UsageError("--distributed: mlx.launch not found (it comes with mlx)")
    return Path(found)


def inner_arguments(argv: list[str]) -> list[str]:
    """The same command for each rank, less the launch flags (and their values)."""
    inner: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_FLAGS:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            inner.append(a)
    return inner


def _relay_ranks(proc: subprocess.Popen[str]) -> int:
    """Pass the ranks' stderr through; the exit status their one-line errors imply."""
    status = 0
    watchdog: threading.Timer | None = None
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("kd: error:"):
            status = max(status, EXIT_BAD_INPUT)
        elif line.startswith("kd: failed:") or "exited with code" in line:
            status = status or EXIT_FAILED
            if watchdog is None:
                # A rank is gone: whatever the others are blocked in, end them soon.
                watchdog = threading.Timer(LAUNCH_GRACE_S, _kill_group, args=(proc.pid,))
                watchdog.daemon = True
                watchdog.start()
    if watchdog is not None:
        proc.wait()
        watchdog.cancel()
    return status


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, signal.SIGKILL)
