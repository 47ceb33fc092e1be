"""Sampling and prompt fitting: how any model here writes answers.

The teacher pass samples the teacher's answers with it, on-policy steps the student's, and
evaluation and the Viewer format prompts with it. Batched through mlx-lm's BatchGenerator;
seeded from the global MLX random state so a run is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.config import KDConfig
from kd_core.vocab.plan import eos_ids

# Sequences decoded together. Decoding reads every weight once per step whatever the batch,
# so bigger batches are much cheaper per token (measured, 8 x 768 teacher on 2 CPU cores:
# 50 prompts x 128 tokens in 35.7 s as batches of 16, 22.3 s as one batch) - as many as the
# KV-cache budget allows, up to GEN_MAX_BATCH.
GEN_MAX_BATCH = 64
GEN_KV_BUDGET = 2 * 2**30  # bytes of KV cache the generation batch may hold

ProgressFn = Callable[[int, int, str], None]


def format_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a user prompt ready for the assistant's answer (chat template if any)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict):  # some transformers versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer.encode(prompt.rstrip() + "\n")]


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes one token costs this model (0 if its caches do not say)."""
    # mlx_lm is imported where it is used here: it pulls in transformers (about 2 s), and
    # the CLI and the dashboard import this module long before anything is sampled.
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([[0]], dtype=mx.int32), cache=cache)
    total = 0.0
    for c in cache:
        for a in (getattr(c, "keys", None), getattr(c, "values", None)):
            if isinstance(a, mx.array) and a.ndim >= 3 and a.shape[2]:
                total += a.nbytes / a.shape[2]  # caches allocate ahead in steps of tokens
    return int(total)


def generation_batch(model: Any, longest: int) -> int:
    """Sequences to decode at once: GEN_MAX_BATCH, or fewer if their KV cache would pass
    GEN_KV_BUDGET (16 when the model's cache size cannot be read)."""
    per_token = kv_bytes_per_token(model)
    if per_token <= 0:
        return 16
    return max(1, min(GEN_MAX_BATCH, GEN_KV_BUDGET // (per_token * max(1, longest))))


def prompt_budget(cfg: KDConfig) -> int:
    """Most prompt tokens a sequence keeps: the rest of max_seq_length is room for the
    response (max_tokens, but never less than half of max_seq_length)."""
    return max(1, cfg.max_seq_length - min(cfg.max_tokens, cfg.max_seq_length // 2))


def fit_prompt(ids: list[int], budget: int) -> tuple[list[int], bool]:
    """Cut a prompt from the front to `budget` tokens: a chat template puts the assistant
    marker at the end, and the model must see it to answer."""
    return (ids[-budget:], True) if len(ids) > budget else (ids, False)


def student_prompt(
    tokenizer: Any, prompt: str, response_len: int, max_seq_length: int | None
) -> tuple[np.ndarray, bool]:
    """The student's formatting of a prompt, cut from the front (fit_prompt) so that it and a
    response of `response_len` tokens fit max_seq_length; and whether it was cut."""
    ids = format_prompt(tokenizer, prompt)
    cut = False
    if max_seq_length is not None:
        ids, cut = fit_prompt(ids, max(1, max_seq_length - response_len))
    return np.array(ids, np.int32), cut


def fitted_prompts(
    tokenizer: Any, prompts: list[str], cfg: KDConfig
) -> list[tuple[list[int], bool]]:
    """Each prompt's token ids as the teacher reads them, and whether it was cut to fit."""
    return [fit_prompt(format_prompt(tokenizer, p), prompt_budget(cfg)) for p in prompts]


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    cfg: KDConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    fitted: list[tuple[list[int], bool]] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Sample one response per prompt; sequences include the EOS when the teacher stopped.
    `fitted`: the prompts' `fitted_prompts`, when the caller has them already.
    Returns (sequences, prompt lengths). Seeded by cfg.seed; see `sample_batch`."""
    mx.random.seed(cfg.seed)
    eos = eos_ids(tokenizer)
    if fitted is None:
        fitted = fitted_prompts(tokenizer, prompts, cfg)
    prompt_ids = [ids for ids, _ in fitted]
    if not prompt_ids:
        return [], []
    budgets = [max(1, min(cfg.max_tokens, cfg.max_seq_length - len(p))) for p in prompt_ids]
    responses = sample_batch(
        model, prompt_ids, budgets, eos, cfg.teacher_temperature, progress, should_stop
    )
    seqs = [np.array(p + r, np.int32) for p, r in zip(prompt_ids, responses, strict=True)]
    return seqs, [len(p) for p in prompt_ids]


def sample_batch(
    model: Any,
    prompt_ids: list[list[int]],
    budgets: list[int],
    eos: list[int],
    temperature: float,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """One sampled response per prompt (at most its budget of tokens; ending in eos[0] when
    the model stopped, so that a student learns to stop), from the global MLX random state.

    mlx-lm's BatchGenerator (what its batch_generate drives), fed every prompt at once so
    finished sequences are replaced by waiting ones, with progress as sequences finish.
    `should_stop` is polled between decoding steps: when it says stop, GenerationStopped
    carries the responses finished so far. The teacher pass and on-policy steps use it."""
    from mlx_lm.generate import BatchGenerator  # see kv_bytes_per_token: import cost
    from mlx_lm.sample_utils import make_sampler

    batch = batch_size or generation_batch(
        model, max(len(p) + b for p, b in zip(prompt_ids, budgets, strict=True))
    )
    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in eos],
        sampler=make_sampler(temp=temperature),
        completion_batch_size=batch,
        prefill_batch_size=min(batch, 16),
    )
    uids = gen.insert(prompt_ids, budgets)
    tokens: dict[int, list[int]] = {u: [] for u in uids}
    last = time.monotonic()
    finished: set[int] = set()
    try:
        while responses := gen.next_generated():
            for r in responses:
                if r.finish_reason != "stop":  # "stop": the EOS, appended below
                    tokens[r.uid].append(int(r.token))
                if r.finish_reason is not None:
                    finished.add(r.uid)
            if progress and (len(finished) == len(uids) or time.monotonic() - last > 0.5):
                progress(len(finished), len(uids), "generating")
                last = time.monotonic()
            if should_stop is not None and should_stop():
                done = {
                    i: _sequence(p, tokens[u], b, eos[0])
                    for i, (p, u, b) in enumerate(zip(prompt_ids, uids, budgets, strict=True))
                    if u in finished
                }
                raise GenerationStopped(len(finished), len(uids), done)
    finally:
        gen.close()
    out = [
        _response(tokens[uid], budget, eos[0]) for uid, budget in zip(uids, budgets, strict=True)
    ]
    if progress:
        progress(len(uids), len(uids), "generating")
    return out


def _response(toks: list[int], budget: int, eos: int) -> list[int]:
    toks = toks[:budget]
    if len(toks) < budget:  # stopped on EOS: keep it so the student learns to stop
        toks = [*toks, eos]
    return toks


def _sequence(prompt: list[int], toks: list[int], budget: int, eos: int) -> np.ndarray:
    return np.array(prompt + _response(toks, budget, eos), np.int32)


class GenerationStopped(Exception):
    """A stop was asked during the teacher pass. `finished` holds the responses done so far
    (prompt index -> sequence): TeacherPass keeps them, so the next run generates the rest."""

    def __init__(self, done: int, total: int, finished: dict[int, np.ndarray] | None = None):
        super().__init__(f"stopped during the teacher pass ({done} of {total} responses done)")
        self.done, self.total = done, total
        self.finished = finished or {}
