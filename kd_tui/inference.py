"""Parent side of the Viewer's backend: starts `python -m kd_tui.infer_worker` and talks to it.

Requests and replies are the typed dataclasses of kd_tui/viewer_protocol.py. Replies are read
by a plain thread (no MLX in this process), parsed (an unreadable line becomes an ErrorReply,
never an exception in the reader) and handed to `on_reply`, which the Viewer turns into a
Textual message (`post_message` is thread-safe). If the worker dies the client reports a
WorkerExit (its last stderr line) and starts a fresh one on the next request.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from kd_tui.viewer_protocol import (
    Cancel,
    Generate,
    Inspect,
    Reply,
    Request,
    Shutdown,
    Slot,
    WorkerExit,
    reply_from_json,
)

__all__ = ["InferenceClient", "Reply", "Slot", "tokenizer_verdict"]


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
            if line.strip():  # (the worker sends library prints to stderr: a bad line is rare)
                self.on_reply(reply_from_json(line))
        code = proc.wait()
        if not self._closing:
            last = next((s for s in reversed(self._stderr) if s.strip()), "")
            why = last.strip()[:200] or f"exit code {code}"
            self.on_reply(WorkerExit(message=f"viewer worker stopped: {why}"))

    def _read_stderr(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            self._stderr.append(line.rstrip())

    def request(self, req: Request) -> int:
        """Send a request (starting the worker if needed) under a fresh id; returns the id."""
        return self._write(lambda rid: dataclasses.replace(req, id=rid).to_json())

    def send(self, op: str, **fields: Any) -> int:
        """Send a raw request by op name (no checking: the worker answers an unknown op or a
        bad field with an ErrorReply); returns its id. Prefer `request`."""
        return self._write(lambda rid: json.dumps({"id": rid, "op": op, **fields}))

    def _write(self, line_for: Callable[[int], str]) -> int:
        with self._lock:
            self.start()
            rid = next(self._ids)
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(line_for(rid) + "\n")
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
        return self.request(
            Generate(
                prompt=prompt,
                slots=list(slots),
                temperature=temperature,
                max_tokens=max_tokens,
                seed=seed,
            )
        )

    def inspect(self, prompt: str, answer: list[int], slots: list[Slot], top_k: int = 5) -> int:
        """Top-k at every position of `answer` (the first slot's tokens) for every slot."""
        return self.request(
            Inspect(prompt=prompt, answer=list(answer), slots=list(slots), top_k=top_k)
        )

    def cancel(self) -> None:
        if self.alive:
            self.request(Cancel())

    def close(self, timeout: float = 3.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._closing = True
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(Shutdown().to_json() + "\n")
                proc.stdin.flush()
                proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def tokenizer_verdict(
    teacher: str, student: str, strategy: str = "auto", timeout: float = 120.0
) -> dict[str, Any]:
    """Compare two model folders' tokenizers in a short child process (blocking: call it from
    a thread worker) under the configured vocab_strategy. Returns {"strategy",
    "explanation", ...}."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kd_tui.infer_worker", "verdict", teacher, student, strategy],
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
