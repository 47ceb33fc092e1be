"""On-policy distillation: the student writes the answers, the teacher scores them.

Off-policy KD trains the student on the teacher's text only, so at inference it meets prefixes
it never trained on (its own) and its errors compound (exposure bias). On a share
`on_policy_ratio` of the optimiser steps the student instead samples a response to each of the
step's prompts with its current adapters (mlx-lm's BatchGenerator, eval mode so no dropout,
`student_temperature`, `max_tokens` as for the teacher), the teacher scores those very tokens
in one teacher-forced forward (with two tokenizers, the same text in its own tokens, aligned by
characters: align_examples.sampled_example), and the step minimises `on_policy_divergence`
(`divergence` when "same") on them (reverse KL is the usual choice: MiniLLM, GKD, on-policy
distillation) — without CE: cross-entropy on the student's own samples would teach it its own
mistakes. The other steps stay off-policy KD with `divergence`: on the demo pair, reverse KL on
the student's samples mixed with forward KL on the teacher's text (half the steps each) beat
reverse KL on both (README: "Choosing a divergence, and on-policy training").

Which steps are on-policy is a pure function of the step (`is_on_policy_step`), and the
sampling draws from the MLX random state the trainer seeds with (seed, step) before each
step, so a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.nn as nn
import numpy as np

from kd_core.config import KDConfig
from kd_core.examples.aligned import sampled_example
from kd_core.examples.batch import Example, TeacherTokens
from kd_core.generate import GEN_MAX_BATCH, sample_batch
from kd_core.runtime.blas import set_blas_threads
from kd_core.vocab.plan import VocabAlignment, eos_ids


def is_on_policy_step(step: int, ratio: float) -> bool:
    """Whether 1-based optimiser step `step` samples from the student: the on-policy steps
    are spread evenly, exactly round(n * ratio) of the first n (1 = every step)."""
    if ratio <= 0.0:
        return False
    return math.floor(step * ratio + 1e-9) > math.floor((step - 1) * ratio + 1e-9)


@dataclass
class SampleStats:
    tokens: int  # response tokens the student sampled (all micro-batches of the step)
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def _all_cores() -> Iterator[None]:
    """Decoding is one stream: give BLAS every core back while the training step's streams
    (kd_core/runtime/cpu_streams.py) have them shared out."""
    previous = set_blas_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        if previous is not None:
            set_blas_threads(previous)


def student_to_teacher(alignment: VocabAlignment) -> np.ndarray:
    """[student_size] teacher id of each student id, -1 where the teacher has none (same
    tokenizer family: the same ids; `project`: through the token strings)."""
    s2t = np.full(alignment.student_size, -1, np.int64)
    s2t[alignment.student_ids] = alignment.teacher_ids
    return s2t


class StudentSampler:
    """Samples the student's answers to a step's prompts and makes them training examples
    whose targets are the student's own tokens and whose teacher inputs are the same text
    in the teacher's ids."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        cfg: KDConfig,
        alignment: VocabAlignment,
        teacher_eos: int,
        teacher_tokenizer: Any = None,
    ) -> None:
        self.model, self.cfg = model, cfg
        # Two tokenizers ("align"): the teacher reads the student's text in its own tokens.
        self.aligned = alignment.aligned
        if self.aligned and teacher_tokenizer is None:
            raise ValueError("on_policy_ratio: an aligned pair needs the teacher's tokenizer")
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer
        self.eos = eos_ids(tokenizer)
        self.s2t = student_to_teacher(alignment)
        self.pieces = alignment.pieces
        self.teacher_eos = int(teacher_eos)

    def sample(
        self, micro: list[list[Example]], should_stop: Callable[[], bool] | None = None
    ) -> tuple[list[list[Example]], SampleStats]:
        """The micro-batches' prompts answered by the student, grouped as given."""
        flat = [e for m in micro for e in m]
        prompts = [[int(t) for t in e.tokens[: e.prompt_len]] for e in flat]
        budgets = [
            max(1, min(self.cfg.max_tokens, self.cfg.max_seq_length - max(len(p), len(t))))
            for p, t in zip(prompts, (e.teacher_prompt for e in flat), strict=True)
        ]
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            with _all_cores():
                responses = sample_batch(
                    self.model,
                    prompts,
                    budgets,
                    self.eos,
                    self.cfg.student_temperature,
                    should_stop=should_stop,
                    batch_size=min(GEN_MAX_BATCH, len(prompts)),
                )
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        made = [self._example(e, r) for e, r in zip(flat, responses, strict=True)]
        out, start = [], 0
        for m in micro:
            out.append(made[start : start + len(m)])
            start += len(m)
        return out, SampleStats(sum(len(r) for r in responses), seconds)

    def _example(self, e: Example, response: list[int]) -> Example:
        if self.aligned:
            return sampled_example(
                e.tokens[: e.prompt_len],
                response,
                e.teacher_prompt,
                self.tokenizer,
                self.teacher_tokenizer,
                self.cfg.top_k,
                self.pieces,
            )
        resp = np.array(response, np.int32)
        inside = resp < len(self.s2t)
        t_resp = np.where(inside, self.s2t[np.minimum(resp, len(self.s2t) - 1)], -1)
        valid = t_resp >= 0  # a token the teacher cannot read: masked, fed as its EOS
        t_resp = np.where(valid, t_resp, self.teacher_eos).astype(np.int32)
        t_prompt = np.asarray(e.teacher_prompt, np.int32)
        return Example(
            np.concatenate([e.tokens[: e.prompt_len], resp]).astype(np.int32),
            e.prompt_len,
            t_prompt,
            TeacherTokens(np.concatenate([t_prompt, t_resp]), len(t_prompt)),
            valid,
        )
