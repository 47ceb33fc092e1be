"""Worker processes: one side of a comparison each, driven step by step from bench/run.py.

Why processes: MLX (with OpenBLAS preloaded) and PyTorch (its own BLAS and OpenMP pool) must
not share a process, peak-memory figures need a clean allocator, and the "no preload" figure
needs a process where MLX was imported before any BLAS was loaded. Driving each side a few
steps at a time lets run.py alternate the two sides of a ratio, so whatever else runs on the
machine slows both alike.

Protocol (JSON lines): the parent sends {"factory": "module:Class", "kwargs": {...}} once,
then {"method": name, "kwargs": {...}} per call; the child answers {"ok": true, "result": ...}
or {"ok": false, "error": traceback}. The child's own prints go to a log file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class WorkerError(RuntimeError):
    pass


class Worker:
    """Parent side: a child process holding one benchmark object."""

    def __init__(
        self, factory: str, log: Path, env: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        self.factory = factory
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115  (closed in close())
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [child_env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env,
        )
        self.setup_seconds = 0.0
        t0 = time.perf_counter()
        self._send({"factory": factory, "kwargs": kwargs})
        self.setup_seconds = time.perf_counter() - t0

    def _send(self, req: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = b""
        if not line:
            code = self.proc.wait()
            raise WorkerError(
                f"{self.factory}: worker died (exit {code}); log tail:\n{self.log_tail()}"
            )
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"{self.factory}.{req.get('method', '__init__')}: {reply['error']}")
        return reply["result"]

    def call(self, method: str, **kwargs: Any) -> Any:
        return self._send({"method": method, "kwargs": kwargs})

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    proto = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    obj: Any = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if "factory" in req:
                mod, name = req["factory"].split(":")
                obj = getattr(importlib.import_module(mod), name)(**req["kwargs"])
                result = None
            else:
                result = getattr(obj, req["method"])(**req.get("kwargs", {}))
            reply = {"ok": True, "result": result}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    # Leave without running MLX's/torch's teardown of threads we never joined.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _serve()
