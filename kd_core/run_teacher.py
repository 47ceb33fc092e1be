"""The teacher as a run holds it: a local model loaded at most once (only on a cache miss), or
a teacher behind a server's address (kd_core/remote/), of which only the tokenizer is here.

For a remote teacher this module also picks the run's passes: the teacher pass and the given-
text pass through the server (kd_core/remote/remote_pass.py, into the same cache files) and,
when steps need the teacher (online mode, on-policy steps), the per-step targets
(kd_core/remote/step_targets.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_lm.utils import load_tokenizer

from kd_core.config import KDConfig
from kd_core.events import EventSink, Log
from kd_core.models.load import load_model, resolve_model
from kd_core.remote.connect import (
    ConnectedTeacher,
    check_remote_modes,
    connect_teacher,
    teacher_token,
)
from kd_core.remote.remote_pass import RemoteGivenPass, RemoteTeacherPass, teacher_vocab
from kd_core.remote.step_targets import RemoteStepTargets
from kd_core.teacher.given import GivenPass
from kd_core.teacher.teacher_pass import TeacherPass
from kd_core.vocab.plan import VocabAlignment


@dataclass
class RunTeacher:
    path: Path
    model: Any = None
    tokenizer: Any = None
    remote: ConnectedTeacher | None = None

    @property
    def name(self) -> str:
        """How outputs name it: its folder, or the server's address."""
        return self.remote.client.http.url if self.remote else str(self.path)

    def load(self, sink: EventSink) -> tuple[Any, Any]:
        """(model, tokenizer); a remote teacher's model is None: it stays on the server."""
        if self.remote is not None:
            return None, self.load_tokenizer()
        if self.model is None:
            sink(Log(f"loading teacher {self.path}"))
            self.model, self.tokenizer = load_model(self.path, "teacher")
        return self.model, self.tokenizer

    def load_tokenizer(self) -> Any:
        """The tokenizer alone (rendering and cache keys need no model)."""
        if self.tokenizer is None:
            if self.remote is not None:
                self.tokenizer = self.remote.load_tokenizer()
            else:
                self.tokenizer = load_tokenizer(self.path)
        return self.tokenizer

    def served_vocab(self) -> int:
        """A remote teacher's vocabulary (its model stays on the server); 0 for a local one."""
        if self.remote is None:
            return 0
        return teacher_vocab(self.remote, self.load_tokenizer())

    def passes(
        self, teacher_pass: TeacherPass, given_pass: GivenPass, cfg: KDConfig, sink: EventSink
    ) -> tuple[Any, Any]:
        """The teacher pass and the given-text pass this teacher runs (remote: through it)."""
        if self.remote is None:
            return teacher_pass, given_pass
        _, tokenizer = self.load(sink)
        return (
            RemoteTeacherPass(self.remote, teacher_pass, cfg, tokenizer),
            RemoteGivenPass(given_pass.cache_dir, given_pass.teacher, cfg, self.remote, tokenizer),
        )

    def step_targets(
        self, cfg: KDConfig, alignment: VocabAlignment | None
    ) -> RemoteStepTargets | None:
        """A remote teacher's per-step targets when steps need the teacher (online mode,
        on-policy steps); None otherwise (offline steps train on the cache)."""
        if self.remote is None or alignment is None:
            return None
        if cfg.teacher_mode != "online" and cfg.on_policy_ratio <= 0:
            return None
        return RemoteStepTargets(self.remote.client, cfg, alignment)


def connect_run_teacher(
    url: str,
    cfg: KDConfig,
    token: str | None,
    tokenizer: str | Path | None,
    cache_dir: Path,
    sink: EventSink,
) -> ConnectedTeacher:
    """The remote teacher, reached and identified, its modes checked first (one line each).
    `token`: the caller's, else $KD_TEACHER_TOKEN; `tokenizer`: the served model's, for
    servers that do not send theirs."""
    check_remote_modes(cfg)
    tok_path = resolve_model(str(tokenizer), "teacher_tokenizer") if tokenizer else None
    remote = connect_teacher(url, cfg.teacher_api, teacher_token(token), cache_dir, tok_path)
    sink(Log(remote.describe()))
    return remote
