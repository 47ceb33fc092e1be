"""Training examples and deterministic batches, typed by where their soft targets come from.

Sequence layout (student vocabulary): s = prompt tokens + response tokens (ending in EOS when
the teacher stopped). The model reads s[:-1] and predicts s[1:]; the response token s[j]
(j >= prompt_len) is predicted at input position j - 1. Only those positions are valid for CE
and KD. Batches depend only on (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would have.

Every example is the same core (its tokens, prompt length, trained mask and its prompt in the
teacher's ids) plus exactly one kind of target:

- SoftTargets: offline, one vocabulary: the teacher's cached top-k at each response position;
- TeacherTokens: online (and on-policy), one vocabulary: the sequence the teacher reads in
  the step, position for position with the student's;
- SpanTargets: two tokenizers (vocab_strategy "align"): per-span targets at the span anchors,
  offline from the cache, online with the teacher's own tokens to read in the step.

A batch has the same shape: the core arrays plus BatchSoftTargets / BatchTeacher / BatchSpans.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

PAD_MULTIPLE = 32  # pad lengths to a multiple: fewer distinct shapes, fewer recompiles


# ---- one example's targets ------------------------------------------------------------------
@dataclass
class SoftTargets:
    """The teacher's top-k soft targets in student ids, per response position (offline)."""

    topk_ids: np.ndarray  # [R, k] int32
    topk_logprobs: np.ndarray  # [R, k] float32 log P_T (-inf = padding)


@dataclass
class TeacherTokens:
    """What the teacher reads when it runs in the step (online, on-policy): its ids of the
    same prompt + response, one teacher position per student response position."""

    tokens: np.ndarray  # [m] int32 teacher ids
    prompt_len: int


@dataclass
class SpanTargets:
    """Two tokenizers (kd_core/examples/aligned.py), per student response position: 0 or the
    kind of span anchored there (ONE_TO_ONE, MULTI, | PIECE; kd_core/losses/aligned.py), the
    span's student tokens, the teacher's log P_T of the span, its top-k tokens the student
    has and those it lacks, and the teacher positions [t0, t1) of the span. Offline the
    top-k come from the cache; online `teacher` is what the teacher reads in the step, and
    `piece_prefix` the part of its token read before each position inside one (PIECE)."""

    span_kind: np.ndarray  # [R] int8
    span_len: np.ndarray  # [R] int32
    teacher_span_lp: np.ndarray  # [R] float32
    topk_ids: np.ndarray  # [R, k] int32
    topk_logprobs: np.ndarray  # [R, k] float32 (-inf = padding)
    uld_logprobs: np.ndarray  # [R, k] float32 (-inf = padding)
    teacher_span: np.ndarray  # [R, 2] int32
    teacher: TeacherTokens | None = None
    piece_prefix: dict[int, str] | None = None


Targets = SoftTargets | TeacherTokens | SpanTargets


@dataclass
class Example:
    """One training sequence in the student's vocabulary and its soft targets."""

    tokens: np.ndarray  # [n] int32: prompt + response
    prompt_len: int
    teacher_prompt: np.ndarray  # the prompt in teacher ids: what on-policy steps answer
    targets: Targets
    valid: np.ndarray | None = None  # [R] bool: response positions trained on (None: all)


# ---- a batch's targets ----------------------------------------------------------------------
@dataclass
class BatchSoftTargets:
    topk_ids: np.ndarray  # [B, L, k]
    topk_logprobs: np.ndarray  # [B, L, k]


@dataclass
class BatchTeacher:
    """The teacher's inputs for the step and, per student position, the teacher position
    whose prediction it is compared with."""

    inputs: np.ndarray  # [B, Lt]
    index: np.ndarray  # [B, L]
    targets: np.ndarray | None = None  # [B, Lt] the token each teacher input predicts (align)


@dataclass
class BatchSpans:
    """SpanTargets as [B, L] / [B, L, k]; online, teacher_span [B, L, 2] holds the teacher
    input positions [p0, p1) whose predictions make the span. The top-k arrays are None
    online (the step reads the teacher)."""

    span_kind: np.ndarray
    span_len: np.ndarray
    teacher_span_lp: np.ndarray
    uld_logprobs: np.ndarray
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    teacher: BatchTeacher | None = None
    teacher_span: np.ndarray | None = None
    piece_prefix: list[dict[int, str]] | None = None  # per row: position -> part read


@dataclass
class Batch:
    inputs: np.ndarray  # [B, L] int32
    targets: np.ndarray  # [B, L] int32
    mask: np.ndarray  # [B, L] float32: 1 at valid response positions
    soft: BatchSoftTargets | BatchTeacher | BatchSpans

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def rows(self, rows: slice) -> Batch:
        """The batch restricted to some rows (every per-row array sliced the same way)."""
        return _rows(self, rows)


def _rows(obj: Any, rows: slice) -> Any:
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray | list):
            changes[f.name] = value[rows]
        elif hasattr(value, "__dataclass_fields__"):
            changes[f.name] = _rows(value, rows)
    return replace(obj, **changes)


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
    if isinstance(e.targets, TeacherTokens):  # only where the teacher's sequence fits too
        m = min(len(e.targets.tokens), max_seq_length) - 1
        r = max(0, min(r, m - (e.targets.prompt_len - 1)))
    return int(r if e.valid is None else e.valid[:r].sum())


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, ((n + multiple - 1) // multiple) * multiple)


def make_batch(examples: list[Example], max_seq_length: int) -> Batch:
    """Pad a list of examples (all with one kind of target) into arrays; response positions
    past max_seq_length are cut."""
    lengths = [min(len(e.tokens), max_seq_length) - 1 for e in examples]
    L = _round_up(max(max(lengths), 1), PAD_MULTIPLE, max(max_seq_length - 1, 1))
    B = len(examples)
    inputs = np.zeros((B, L), np.int32)
    targets = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.float32)
    for b, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        inputs[b, :n] = e.tokens[:n]
        targets[b, :n] = e.tokens[1 : n + 1]
        p0 = e.prompt_len - 1  # input position that predicts the first response token
        r = max(0, n - p0)  # response positions that fit
        mask[b, p0 : p0 + r] = np.ones(r, bool) if e.valid is None else e.valid[:r]
    kind = examples[0].targets
    soft: BatchSoftTargets | BatchTeacher | BatchSpans
    if isinstance(kind, SoftTargets):
        soft = _soft_targets(examples, lengths, L)
    elif isinstance(kind, TeacherTokens):
        soft = _teacher_batch(examples, lengths, L, max_seq_length, mask)
    else:
        soft = _spans(examples, lengths, L, max_seq_length, mask)
    return Batch(inputs, targets, mask, soft)


def _soft_targets(examples: list[Example], lengths: list[int], L: int) -> BatchSoftTargets:
    k = examples[0].targets.topk_ids.shape[1]  # type: ignore[union-attr]
    ids = np.zeros((len(examples), L, k), np.int32)
    lp = np.zeros((len(examples), L, k), np.float32)
    for b, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        t = e.targets
        assert isinstance(t, SoftTargets), "a batch holds one kind of target"
        p0 = e.prompt_len - 1
        r = max(0, n - p0)
        ids[b, p0 : p0 + r] = t.topk_ids[:r]
        lp[b, p0 : p0 + r] = t.topk_logprobs[:r]
    return BatchSoftTargets(ids, lp)


def _teacher_inputs(examples: list[TeacherTokens], max_len: int) -> np.ndarray:
    t_len = max(min(len(t.tokens), max_len) - 1 for t in examples)
    Lt = _round_up(max(t_len, 1), PAD_MULTIPLE, max(max_len - 1, 1))
    return np.zeros((len(examples), Lt), np.int32)


def _teacher_batch(
    examples: list[Example], lengths: list[int], L: int, max_len: int, mask: np.ndarray
) -> BatchTeacher:
    """Teacher inputs and, per student position, the teacher position it is compared with;
    positions whose teacher position did not fit are dropped from `mask`."""
    reads = [e.targets for e in examples]
    assert all(isinstance(t, TeacherTokens) for t in reads), "a batch holds one kind of target"
    t_inputs = _teacher_inputs(reads, max_len)  # type: ignore[arg-type]
    t_index = np.zeros((len(examples), L), np.int32)
    for b, (e, n, t) in enumerate(zip(examples, lengths, reads, strict=True)):
        p0 = e.prompt_len - 1
        r = max(0, n - p0)
        m = min(len(t.tokens), max_len) - 1  # type: ignore[union-attr]
        t_inputs[b, :m] = t.tokens[:m]  # type: ignore[union-attr]
        tp0 = t.prompt_len - 1  # type: ignore[union-attr]
        r_t = max(0, min(r, m - tp0))
        t_index[b, p0 : p0 + r_t] = np.arange(tp0, tp0 + r_t)
        mask[b, p0 + r_t : p0 + r] = 0.0
    return BatchTeacher(t_inputs, t_index)


def _spans(
    examples: list[Example], lengths: list[int], L: int, max_len: int, mask: np.ndarray
) -> BatchSpans:
    """The span arrays (the offsets make_batch uses). A span that does not fit whole
    (max_seq_length) is dropped; its tokens still count for CE."""
    spans = [e.targets for e in examples]
    assert all(isinstance(s, SpanTargets) for s in spans), "a batch holds one kind of target"
    B = len(examples)
    k = spans[0].uld_logprobs.shape[1]  # type: ignore[union-attr]
    online = spans[0].teacher is not None  # type: ignore[union-attr]
    out = BatchSpans(
        np.zeros((B, L), np.int8),
        np.ones((B, L), np.int32),
        np.zeros((B, L), np.float32),
        np.full((B, L, k), -np.inf, np.float32),
    )
    if online:
        t_inputs = _teacher_inputs([s.teacher for s in spans], max_len)  # type: ignore[misc,union-attr]
        out.teacher = BatchTeacher(t_inputs, np.zeros((B, L), np.int32), np.zeros_like(t_inputs))
        out.teacher_span = np.zeros((B, L, 2), np.int32)
    else:
        out.topk_ids = np.zeros((B, L, k), np.int32)
        out.topk_logprobs = np.zeros((B, L, k), np.float32)
    for b, (e, n, s) in enumerate(zip(examples, lengths, spans, strict=True)):
        _fill_span_row(out, b, e.prompt_len - 1, max(0, n - (e.prompt_len - 1)), s, max_len)  # type: ignore[arg-type]
    return out


def _fill_span_row(out: BatchSpans, b: int, p0: int, r: int, s: SpanTargets, max_len: int) -> None:
    ends = np.arange(r) + s.span_len[:r]  # one past each span's last student token
    fits = (s.span_kind[:r] > 0) & (ends <= r)
    if out.teacher is not None and s.teacher is not None:
        m = min(len(s.teacher.tokens), max_len) - 1
        tp0 = s.teacher.prompt_len - 1
        out.teacher.inputs[b, :m] = s.teacher.tokens[:m]
        out.teacher.targets[b, :m] = s.teacher.tokens[1 : m + 1]  # type: ignore[index]
        fits &= tp0 + s.teacher_span[:r, 1] <= m
        span = np.where(fits[:, None], tp0 + s.teacher_span[:r], 0)
        out.teacher_span[b, p0 : p0 + r] = span  # type: ignore[index]
        out.teacher.index[b, p0 : p0 + r] = span[:, 0]
    out.span_kind[b, p0 : p0 + r] = np.where(fits, s.span_kind[:r], 0)
    out.span_len[b, p0 : p0 + r] = np.maximum(s.span_len[:r], 1)
    out.teacher_span_lp[b, p0 : p0 + r] = s.teacher_span_lp[:r]
    out.uld_logprobs[b, p0 : p0 + r] = s.uld_logprobs[:r]
    if out.topk_ids is not None and out.topk_logprobs is not None:
        out.topk_ids[b, p0 : p0 + r] = s.topk_ids[:r]
        lp = np.where(fits[:, None], s.topk_logprobs[:r], -np.inf)  # a dropped span: no KD
        out.topk_logprobs[b, p0 : p0 + r] = lp
    if s.piece_prefix:
        if out.piece_prefix is None:
            out.piece_prefix = [{} for _ in range(len(out.span_kind))]
        out.piece_prefix[b] = {p0 + j: x for j, x in s.piece_prefix.items() if j < r}
