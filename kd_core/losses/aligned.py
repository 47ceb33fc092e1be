"""The KD loss across two tokenizers (vocab_strategy "align"), per aligned span.

The student reads the teacher's response text in its own tokens; kd_core.vocab.spans cuts the text
into spans that a run of teacher tokens and a run of student tokens cover exactly. What each
span contributes (docs/ARCHITECTURE.md, "Cross-tokenizer distillation"):

- a span with one teacher token (align_targets = "pieces", the default; flag PIECE): at every
  student position of the span, the teacher's next-token distribution read in the student's
  pieces (kd_core/vocab/pieces.py: at the anchor as is, inside the span conditioned on the
  part already read), compared with the chosen divergence over its k + 1 buckets {projected
  tokens, rest}, as the one-tokenizer offline loss compares the teacher's top-k.
- otherwise, at the span's *anchor* (the student position that predicts its first token):
  * one token on both sides (kind 1; align_targets = "shared"):
    exact part: the chosen divergence over the k + 1 buckets {teacher top-k tokens that the
    student vocabulary also has (matched by normalised string), rest}; plus Universal Logit
    Distillation on the remainder (Boizard et al. 2024, as TRL's GOLD): the L1 distance
    between the sorted probabilities of the teacher's top-k tokens the student lacks and the
    student's k largest probabilities among tokens the teacher lacks.
    KD_1 = D(buckets) + ULD_WEIGHT * ULD.
  * several tokens on either side (kind 2; with "pieces", only spans of several teacher
    tokens): the probability each model gives the whole span, log P(span) = sum of its
    tokens' log-probabilities at T, compared as a two-outcome distribution {this span, any
    other continuation}: KD_2 = p log(p/q) + (1-p) log((1-p)/(1-q)). The likelihood matching
    of Minixhofer et al. 2025 and GOLD's merged spans pursue the same quantity.

Everything is scaled by T^2 and summed; the trainer divides by the student's response tokens
(the CE count), so KD is per student token like CE. The teacher gets no gradient.
"""

from __future__ import annotations

import mlx.core as mx

from kd_core.losses.core import ce_loss_sum
from kd_core.losses.divergences import DivergenceSpec, topk_terms

ULD_WEIGHT = 1.0  # the remainder's sorted-probability term beside the exact part
ONE_TO_ONE, MULTI = 1, 2  # the kind of span anchored at a position (kind & SPAN_KIND)
SPAN_KIND = 3
PIECE = 4  # flag: a projected target here (kd_core/vocab/pieces.py); replaces the span's terms
_LOG_ONE_MINUS = -1e-4  # a span log-probability is kept below this: log(1 - q) stays finite


def span_log_probs(log_q_chosen: mx.array, span_len: mx.array) -> mx.array:
    """[B, L]: at each position j, the sum of log_q_chosen over [j, j + span_len[j])
    (span_len >= 1; positions past the end count as 0)."""
    B, L = log_q_chosen.shape
    cs = mx.cumsum(log_q_chosen, axis=1)
    last = mx.minimum(mx.arange(L)[None, :] + span_len.astype(mx.int32) - 1, L - 1)
    last = mx.maximum(last, 0)
    return mx.take_along_axis(cs, last, axis=1) - cs + log_q_chosen


def binary_kl(log_p: mx.array, log_q: mx.array) -> mx.array:
    """KL between {event, not event} distributions given the events' log-probabilities."""
    log_p = mx.minimum(log_p, _LOG_ONE_MINUS)
    log_q = mx.minimum(log_q, _LOG_ONE_MINUS)
    p = mx.exp(log_p)
    log_1p, log_1q = mx.log1p(-p), mx.log1p(-mx.exp(log_q))
    return p * (log_p - log_q) + (1.0 - p) * (log_1p - log_1q)


def sorted_top(values: mx.array, k: int) -> mx.array:
    """The k largest entries of the last axis, descending; the gradient flows to the values
    (the choice and the order are constants)."""
    k = min(k, values.shape[-1])
    picked = mx.stop_gradient(values)
    idx = mx.argpartition(-picked, kth=k - 1, axis=-1)[..., :k]
    vals = mx.take_along_axis(values, idx, axis=-1)
    order = mx.argsort(-mx.stop_gradient(vals), axis=-1)
    return mx.take_along_axis(vals, order, axis=-1)


def uld_terms(log_q: mx.array, student_only: mx.array, uld_logprobs: mx.array) -> mx.array:
    """Per position: sum |sorted teacher remainder - sorted student remainder| over k slots.
    log_q [.., V] the student's log Q_T; student_only [V] 1 for tokens the teacher lacks;
    uld_logprobs [.., k] the teacher's top-k tokens the student lacks (descending, -inf pad)."""
    k = uld_logprobs.shape[-1]
    w = sorted_top(mx.exp(log_q) * student_only, k)
    u = mx.exp(mx.stop_gradient(uld_logprobs.astype(mx.float32)))  # exp(-inf) = 0
    if w.shape[-1] < k:  # a student with fewer own tokens than k: the rest are 0
        pad = mx.zeros((*w.shape[:-1], k - w.shape[-1]), w.dtype)
        w = mx.concatenate([w, pad], axis=-1)
    return mx.abs(u - w).sum(axis=-1)


def align_loss_sums(
    logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    kind: mx.array,
    span_len: mx.array,
    teacher_span_lp: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    uld_logprobs: mx.array,
    student_only: mx.array,
    temperature: float,
    spec: DivergenceSpec,
) -> tuple[mx.array, mx.array]:
    """(KD sum, CE sum) over a batch. `mask` [B, L] marks the student's response tokens (CE);
    `kind` [B, L] 0 / ONE_TO_ONE / MULTI at span anchors; `span_len` [B, L] the span's student
    tokens at a MULTI anchor; `teacher_span_lp` [B, L] the teacher's log P_T of that span;
    `topk_ids` / `topk_logprobs` [B, L, k] the teacher's matched top-k in student ids (-inf =
    not a bucket); `uld_logprobs` [B, L, k] its unmatched top-k; `student_only` [V]."""
    ce, _ = ce_loss_sum(logits, targets, mask=mask)
    log_q = student_log_q(logits, temperature)
    local = one_to_one_terms(log_q, kind, topk_ids, topk_logprobs, uld_logprobs, student_only, spec)
    lq_chosen = chosen_log_q(log_q, targets) * mask
    span_q = span_log_probs(lq_chosen, mx.maximum(span_len, 1))
    multi = (kind == MULTI).astype(mx.float32)  # a span with several teacher tokens
    span = binary_kl(mx.stop_gradient(teacher_span_lp.astype(mx.float32)), span_q)
    return (temperature**2) * (local.sum() + (multi * span).sum()), ce


def student_log_q(logits: mx.array, temperature: float) -> mx.array:
    z = logits.astype(mx.float32) / temperature
    return z - mx.logsumexp(z, axis=-1, keepdims=True)


def chosen_log_q(log_q: mx.array, targets: mx.array) -> mx.array:
    return mx.take_along_axis(log_q, targets[..., None].astype(mx.int32), axis=-1)[..., 0]


def one_to_one_terms(
    log_q: mx.array,
    kind: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    uld_logprobs: mx.array,
    student_only: mx.array,
    spec: DivergenceSpec,
) -> mx.array:
    """Per position: the one-to-one spans' exact part + ULD_WEIGHT * ULD; at PIECE positions
    the divergence from the projected target over its buckets (0 elsewhere)."""
    one = (kind == ONE_TO_ONE).astype(mx.float32)
    piece = (kind >= PIECE).astype(mx.float32)
    lq_k = mx.take_along_axis(log_q, topk_ids.astype(mx.int32), axis=-1)
    exact = topk_terms(mx.stop_gradient(topk_logprobs.astype(mx.float32)), lq_k, spec)
    uld = uld_terms(log_q, student_only, uld_logprobs)
    return (one + piece) * exact + one * ULD_WEIGHT * uld
