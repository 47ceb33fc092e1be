"""Prompt formatting, training examples and deterministic batches.

Sequence layout (student vocabulary): s = prompt tokens + response tokens (ending in EOS when
the teacher stopped). The model reads s[:-1] and predicts s[1:]; the response token s[j]
(j >= prompt_len) is predicted at input position j - 1. Only those positions are valid for CE
and KD. Batches depend only on (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAD_MULTIPLE = 32  # pad lengths to a multiple: fewer distinct shapes, fewer recompiles


@dataclass
class Example:
    """One training sequence in the student's vocabulary, with its soft targets."""

    tokens: np.ndarray  # [n] int32: prompt + response
    prompt_len: int
    topk_ids: np.ndarray | None = None  # [R, k] int32 student ids (offline mode)
    topk_logprobs: np.ndarray | None = None  # [R, k] float32 log P_T (-inf = padding)
    valid: np.ndarray | None = None  # [R] bool: response positions that can be trained on
    teacher_tokens: np.ndarray | None = None  # [m] teacher ids (online mode)
    teacher_prompt_len: int = 0
    teacher_prompt: np.ndarray | None = None  # the prompt in teacher ids (on-policy steps)
    # vocab_strategy "align" (kd_core/examples/aligned.py), per response position: 0 or the
    # kind of span anchored there (1 one-to-one, 2 several tokens), the span's student tokens,
    # the teacher's log P_T of the span, its top-k tokens the student lacks; online, the
    # teacher response tokens [t0, t1) of the span.
    span_kind: np.ndarray | None = None  # [R] int8
    span_len: np.ndarray | None = None  # [R] int32
    teacher_span_lp: np.ndarray | None = None  # [R] float32
    uld_logprobs: np.ndarray | None = None  # [R, k] float32 (-inf = padding)
    teacher_span: np.ndarray | None = None  # [R, 2] int32 (online)
    # online, the part of its teacher token read before each position inside one (PIECE)
    piece_prefix: dict[int, str] | None = None


@dataclass
class Batch:
    inputs: np.ndarray  # [B, L] int32
    targets: np.ndarray  # [B, L] int32
    mask: np.ndarray  # [B, L] float32: 1 at valid response positions
    topk_ids: np.ndarray | None = None  # [B, L, k]
    topk_logprobs: np.ndarray | None = None  # [B, L, k]
    teacher_inputs: np.ndarray | None = None  # [B, Lt] (online)
    teacher_index: np.ndarray | None = None  # [B, L] teacher position of each student position
    # vocab_strategy "align" (see Example): [B, L] / [B, L, k]; online, teacher_span [B, L, 2]
    # holds teacher input positions [p0, p1) whose predictions make the span.
    span_kind: np.ndarray | None = None
    span_len: np.ndarray | None = None
    teacher_span_lp: np.ndarray | None = None
    uld_logprobs: np.ndarray | None = None
    teacher_span: np.ndarray | None = None
    teacher_targets: np.ndarray | None = None  # [B, Lt] the token each teacher input predicts
    piece_prefix: list[dict[int, str]] | None = None  # per row: position -> part read

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


@dataclass
class BatchPlan:
    """Which examples make each micro-batch of each step; a pure function of (seed, step)."""

    n_examples: int
    batch_size: int
    seed: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.n_examples)
        return self._perms[epoch]

    def indices(self, step: int, micro: int = 0, accumulation: int = 1) -> list[int]:
        """Example indices for micro-batch `micro` of 1-based optimiser step `step`."""
        start = ((step - 1) * accumulation + micro) * self.batch_size
        out = []
        for g in range(start, start + self.batch_size):
            epoch, pos = divmod(g, self.n_examples)
            out.append(int(self._perm(epoch)[pos]))
        return out


def forward_inputs(sequences: list[np.ndarray]) -> np.ndarray:
    """Right-padded [B, L] model inputs (each sequence less its last token) for a
    teacher-forced forward; position j then predicts token j + 1."""
    L = max(len(s) for s in sequences) - 1
    x = np.zeros((len(sequences), max(L, 1)), np.int32)
    for b, s in enumerate(sequences):
        x[b, : len(s) - 1] = s[:-1]
    return x


def valid_tokens(e: Example, max_seq_length: int) -> int:
    """Response positions of `e` that a batch trains on (same rules as make_batch)."""
    n = min(len(e.tokens), max_seq_length) - 1
    r = max(0, n - (e.prompt_len - 1))
    if e.teacher_tokens is not None and e.span_kind is None:  # align: the student's own tokens
        m = min(len(e.teacher_tokens), max_seq_length) - 1
        r = max(0, min(r, m - (e.teacher_prompt_len - 1)))
    return int(r if e.valid is None else e.valid[:r].sum())


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, ((n + multiple - 1) // multiple) * multiple)


def make_batch(examples: list[Example], max_seq_length: int, top_k: int | None) -> Batch:
    """Pad a list of examples into arrays (response positions past max_seq_length are cut)."""
    lengths = [min(len(e.tokens), max_seq_length) - 1 for e in examples]
    L = _round_up(max(max(lengths), 1), PAD_MULTIPLE, max(max_seq_length - 1, 1))
    B = len(examples)
    inputs = np.zeros((B, L), np.int32)
    targets = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.float32)
    ids = lp = None
    if top_k is not None:
        ids = np.zeros((B, L, top_k), np.int32)
        lp = np.zeros((B, L, top_k), np.float32)
    t_inputs = t_index = None
    if examples[0].teacher_tokens is not None:
        t_len = max(min(len(e.teacher_tokens), max_seq_length) - 1 for e in examples)
        Lt = _round_up(max(t_len, 1), PAD_MULTIPLE, max(max_seq_length - 1, 1))
        t_inputs = np.zeros((B, Lt), np.int32)
        t_index = np.zeros((B, L), np.int32)
    for b, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        inputs[b, :n] = e.tokens[:n]
        targets[b, :n] = e.tokens[1 : n + 1]
        p0 = e.prompt_len - 1  # input position that predicts the first response token
        r = max(0, n - p0)  # response positions that fit
        valid = np.ones(r, bool) if e.valid is None else e.valid[:r]
        mask[b, p0 : p0 + r] = valid
        if ids is not None and e.topk_ids is not None:
            ids[b, p0 : p0 + r] = e.topk_ids[:r]
            lp[b, p0 : p0 + r] = e.topk_logprobs[:r]
        if t_inputs is not None:
            m = min(len(e.teacher_tokens), max_seq_length) - 1
            t_inputs[b, :m] = e.teacher_tokens[:m]
            tp0 = e.teacher_prompt_len - 1
            r_t = max(0, min(r, m - tp0))
            t_index[b, p0 : p0 + r_t] = np.arange(tp0, tp0 + r_t)
            mask[b, p0 + r_t : p0 + r] = 0.0
    batch = Batch(inputs, targets, mask, ids, lp, t_inputs, t_index)
    if examples[0].span_kind is not None:
        _fill_spans(batch, examples, lengths, top_k, max_seq_length)
    return batch


def _fill_spans(
    batch: Batch, examples: list[Example], lengths: list[int], top_k: int | None, max_len: int
) -> None:
    """The align arrays of `batch` (the offsets make_batch uses). A span that does not fit
    whole (max_seq_length) is dropped; its tokens still count for CE."""
    B, L = batch.inputs.shape
    kind = np.zeros((B, L), np.int8)
    span_len = np.ones((B, L), np.int32)
    t_lp = np.zeros((B, L), np.float32)
    k = examples[0].uld_logprobs.shape[1]
    uld = np.full((B, L, k), -np.inf, np.float32)
    online = batch.teacher_inputs is not None
    t_span = np.zeros((B, L, 2), np.int32) if online else None
    if online:
        batch.teacher_targets = np.zeros_like(batch.teacher_inputs)
        batch.teacher_index[:] = 0
        batch.mask[:] = 0.0  # refilled below: the student's own tokens, not the teacher's
    for b, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        p0 = e.prompt_len - 1
        r = max(0, n - p0)
        if online:
            batch.mask[b, p0 : p0 + r] = 1.0
        ends = np.arange(r) + e.span_len[:r]  # one past each span's last student token
        fits = (e.span_kind[:r] > 0) & (ends <= r)
        if online:
            m = min(len(e.teacher_tokens), max_len) - 1
            tp0 = e.teacher_prompt_len - 1
            batch.teacher_targets[b, :m] = e.teacher_tokens[1 : m + 1]
            fits &= tp0 + e.teacher_span[:r, 1] <= m
            t_span[b, p0 : p0 + r] = np.where(fits[:, None], tp0 + e.teacher_span[:r], 0)
            batch.teacher_index[b, p0 : p0 + r] = t_span[b, p0 : p0 + r, 0]
        kind[b, p0 : p0 + r] = np.where(fits, e.span_kind[:r], 0)
        span_len[b, p0 : p0 + r] = np.maximum(e.span_len[:r], 1)
        t_lp[b, p0 : p0 + r] = e.teacher_span_lp[:r]
        uld[b, p0 : p0 + r] = e.uld_logprobs[:r]
        if e.piece_prefix:
            if batch.piece_prefix is None:
                batch.piece_prefix = [{} for _ in range(B)]
            batch.piece_prefix[b] = {p0 + j: x for j, x in e.piece_prefix.items() if j < r}
        if top_k is not None and batch.topk_logprobs is not None:
            dropped = ~fits
            batch.topk_logprobs[b, p0 : p0 + r][dropped] = -np.inf
    batch.span_kind, batch.span_len, batch.teacher_span_lp = kind, span_len, t_lp
    batch.uld_logprobs, batch.teacher_span = uld, t_span
