"""The teacher pass through a remote teacher, into the same cache as the in-process one.

Same keys (kd_core/teacher/teacher_pass.py: the generation key and the targets key hold the
teacher's weights and tokenizer hashes, which a `kd serve-teacher` reports as an in-process
teacher would compute them), same file format, same float16 rounding: a cache made by either
serves the other. The server samples the answers (`/v1/generate`: the same prompt fitting,
seeding and batch generator as in-process) and scores them; when only the answers are cached
(another T or top_k) the server scores them (`/v1/score`). The answers' texts and character
offsets come with the generate reply, or are computed here with the teacher's tokenizer.

One request per domain: the server seeds its random state per request, so splitting the
prompts would sample other answers than an in-process pass. While it runs, the server's
progress is read from /v1/info and reported, and a stop ends the pass at once
(GenerationStopped); the server finishes the request, and the next run asks again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd_core.config import KDConfig
from kd_core.generate import GenerationStopped, ProgressFn
from kd_core.remote.clients import Generated
from kd_core.remote.connect import ConnectedTeacher, make_teacher
from kd_core.remote.transport import RemoteTeacherError, RetryPolicy
from kd_core.teacher.cache import (
    CacheError,
    TeacherOutputs,
    load_outputs,
    response_texts,
    save_outputs,
)
from kd_core.teacher.given import GivenPass
from kd_core.teacher.teacher_pass import TeacherPass

POLL_S = 0.5  # how often a waiting teacher pass reads the server's progress
POLL_POLICY = RetryPolicy(retries=0, connect_timeout_s=5.0, read_timeout_s=10.0)


@dataclass
class RemoteTeacherPass:
    """TeacherPass's `run` for a teacher behind a URL (`load_teacher` is never called)."""

    teacher: ConnectedTeacher
    local: TeacherPass  # the cache: its paths and lookup
    cfg: KDConfig
    tokenizer: Any  # the teacher's (fetched from the server, or named locally)

    def run(
        self,
        domain: str,
        prompts: list[str],
        with_targets: bool,
        load_teacher: Callable[[], tuple[Any, Any]] | None = None,
        progress: ProgressFn | None = None,
        warn: Callable[[str], None] | None = None,
        world: Any = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TeacherOutputs:
        hit = self.local.lookup(domain, prompts, with_targets, warn)
        if hit is not None:
            return hit
        gkey, tkey, gpath, tpath = self.local.paths(domain, prompts)
        answers = self._cached_answers(gkey, gpath, warn)
        if progress:
            progress(0, len(prompts), "remote teacher")
        t0 = time.perf_counter()
        if answers is None:
            answers = self._generate(prompts, with_targets, progress, should_stop)
            save_outputs(gpath, _answers_only(answers), {"key": gkey})
        elif with_targets:
            self._score(answers)
        if progress:
            progress(len(prompts), len(prompts), "remote teacher")
        if not with_targets:
            answers.path, answers.topk_ids, answers.topk_logprobs = gpath, None, None
            return answers
        seconds = round(time.perf_counter() - t0, 3)
        save_outputs(tpath, answers, {"key": tkey, "seconds": seconds})
        answers.path = tpath
        return answers

    def _cached_answers(
        self, gkey: str, gpath: Any, warn: Callable[[str], None] | None
    ) -> TeacherOutputs | None:
        if not gpath.exists():
            return None
        try:
            return load_outputs(gpath, {"key": gkey}, False)
        except CacheError as e:
            if warn:
                warn(f"{e}; rebuilding")
            return None

    def _generate(
        self,
        prompts: list[str],
        with_targets: bool,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TeacherOutputs:
        cfg = self.cfg

        def ask() -> Generated:
            return self.teacher.client.generate(
                prompts,
                max_tokens=cfg.max_tokens,
                teacher_temperature=cfg.teacher_temperature,
                seed=cfg.seed,
                max_seq_length=cfg.max_seq_length,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                with_targets=with_targets,
                tokenizer=self.tokenizer,
            )

        if self.teacher.api == "kd" and (progress or should_stop):
            got = watched(self.teacher, ask, len(prompts), progress, should_stop)
        else:
            got = ask()
        if got.sequences is None:
            raise CacheError("remote teacher: the reply does not carry the prompts' token ids")
        out = TeacherOutputs(
            got.sequences, got.prompt_lens, None, None, self._vocab(), prompt_cut=got.prompt_cut
        )
        if with_targets and got.targets is not None:
            _set_targets(out, got.targets.ids, got.targets.logprobs, got.targets.chosen)
            if got.texts is not None and got.char_ends is not None:
                out.texts, out.char_ends = got.texts, got.char_ends
            else:
                out.texts, out.char_ends = response_texts(
                    self.tokenizer, out.sequences, out.prompt_lens
                )
        return out

    def _score(self, out: TeacherOutputs) -> None:
        """Targets on answers the cache holds (made at another T or top_k)."""
        ids, lps, chosen = self.teacher.client.score(
            out.sequences, out.prompt_lens, self.cfg.temperature, self.cfg.top_k
        )
        _set_targets(out, ids, lps, chosen)
        out.texts, out.char_ends = response_texts(self.tokenizer, out.sequences, out.prompt_lens)

    def _vocab(self) -> int:
        return teacher_vocab(self.teacher, self.tokenizer)


def teacher_vocab(teacher: ConnectedTeacher, tokenizer: Any) -> int:
    """The served vocabulary, or for servers that do not report it (vLLM, SGLang, mlx_lm) the
    tokenizer's size: it only decides whether the cache stores ids as uint16."""
    vocab = teacher.info.vocab_size
    return vocab if vocab > 0 else len(tokenizer.get_vocab())


@dataclass
class RemoteGivenPass(GivenPass):
    """The given-text pass (kd_core/teacher/given.py: same keys, same cache file) with the
    server scoring the rows' sequences: `score` is the only difference."""

    remote: ConnectedTeacher | None = None
    tokenizer: Any = None

    def score(
        self,
        load_teacher: Callable[[], tuple[Any, Any]],
        seqs: list[np.ndarray],
        plens: list[int],
        progress: ProgressFn | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
        assert self.remote is not None
        if progress:
            progress(0, len(seqs), "remote teacher")
        ids, lps, chosen = self.remote.client.score(
            seqs, plens, self.cfg.temperature, self.cfg.top_k
        )
        if progress:
            progress(len(seqs), len(seqs), "remote teacher")
        return ids, lps, chosen, teacher_vocab(self.remote, self.tokenizer)


def watched(
    teacher: ConnectedTeacher,
    ask: Callable[[], Generated],
    total: int,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> Generated:
    """`ask()` (one long /v1/generate) on a thread of its own while this one reads the
    server's progress from /v1/info every POLL_S seconds and reports it, and honours a stop:
    GenerationStopped, the request left to finish on the server (its answers are not kept)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["got"] = ask()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=run, name="kd-remote-generate", daemon=True)
    worker.start()
    c = teacher.client
    poller = make_teacher(c.http.url, teacher.api, c.token, policy=POLL_POLICY)
    while worker.is_alive():
        worker.join(POLL_S)
        if not worker.is_alive():
            break
        if should_stop is not None and should_stop():
            raise GenerationStopped(0, total)
        if progress is not None:
            try:
                st = poller.info().extra.get("stats") or {}
            except RemoteTeacherError:
                continue  # the generate request reports the server's failure itself
            if st.get("working_on") and st.get("total"):
                progress(int(st["done"]), int(st["total"]), str(st["working_on"]))
    poller.close()
    if "error" in box:
        raise box["error"]
    return box["got"]


def _answers_only(out: TeacherOutputs) -> TeacherOutputs:
    return TeacherOutputs(
        out.sequences, out.prompt_lens, None, None, out.teacher_vocab, prompt_cut=out.prompt_cut
    )


def _set_targets(
    out: TeacherOutputs, ids: list[np.ndarray], lps: list[np.ndarray], chosen: list[np.ndarray]
) -> None:
    # Train on exactly what the cache holds (float16), as the in-process pass does.
    out.topk_ids = [np.asarray(i, np.int32) for i in ids]
    out.topk_logprobs = [np.asarray(lp).astype(np.float16).astype(np.float32) for lp in lps]
    out.chosen_logprobs = [np.asarray(c, np.float32) for c in chosen]
