"""Parent side of the Viewer's backend: starts `python -m kd_tui.infer_worker` and talks to it.

Replies are read by a plain thread (no MLX in this process) and handed to `on_reply`, which
the Viewer turns into a Textual message (`post_message` is thread-safe). If the worker dies
the client reports {"type": "exit", "message": its last stderr line} and starts a fresh one
on the next request.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

Reply = dict[str, Any]


@dataclass
class Slot:
    """One column of the Viewer: a model (name or folder) with an optional adapter folder."""

    name: str
    model: str
    adapter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InferenceClient:
    def __init__(
        self,
        on_reply: Callable[[Reply], None],
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.on_reply = on_reply
        self.python = python or sys.executable
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._closing = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._closing = False
        self._stderr.clear()
        self.proc = subprocess.Popen(
            [self.python, "-m", "kd_tui.infer_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env,
        )
        proc = self.proc
        threading.Thread(target=self._read_stdout, args=(proc,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True).start()

    def _read_stdout(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # not ours (the worker sends library prints to stderr anyway)
            self.on_reply(reply)
        code = proc.wait()
        if not self._closing:
            last = next((s for s in reversed(self._stderr) if s.strip()), "")
            why = last.strip()[:200] or f"exit code {code}"
            self.on_reply({"type": "exit", "id": None, "message": f"viewer worker stopped: {why}"})

    def _read_stderr(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            self._stderr.append(line.rstrip())

    def send(self, op: str, **fields: Any) -> int:
        """Send a request (starting the worker if needed); returns its id."""
        with self._lock:
            self.start()
            rid = next(self._ids)
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the stdout reader reports the exit
            return rid

    def generate(
        self,
        prompt: str,
        slots: list[Slot],
        temperature: float = 0.7,
        max_tokens: int = 64,
        seed: int = 0,
    ) -> int:
        return self.send(
            "generate",
            prompt=prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            slots=[s.to_dict() for s in slots],
        )

    def inspect(self, prompt: str, answer: list[int], slots: list[Slot], top_k: int = 5) -> int:
        """Top-k at every position of `answer` (the first slot's tokens) for every slot."""
        return self.send(
            "inspect",
            prompt=prompt,
            answer=list(answer),
            top_k=top_k,
            slots=[s.to_dict() for s in slots],
        )

    def cancel(self) -> None:
        if self.alive:
            self.send("cancel")

    def close(self, timeout: float = 3.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._closing = True
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                proc.stdin.flush()
                proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def tokenizer_verdict(teacher: str, student: str, timeout: float = 120.0) -> dict[str, Any]:
    """Compare two model folders' tokenizers in a short child process (blocking: call it from
    a thread worker). Returns {"strategy", "explanation", ...}."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kd_tui.infer_worker", "verdict", teacher, student],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    except subprocess.TimeoutExpired:
        return {"strategy": "error", "explanation": "comparing the tokenizers took too long"}
    for line in done.stdout.splitlines():
        try:
            return json.loads(line)
        except ValueError:
            continue
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {"strategy": "error", "explanation": f"cannot compare the tokenizers: {last[:200]}"}
