"""The losses, exactly as docs/ARCHITECTURE.md states them.

    P_T = softmax(teacher_logits / T)      Q_T = softmax(student_logits / T)
    KD  = T^2 * mean over valid positions of  sum_v P_T(v) (log P_T(v) - log Q_T(v))
    CE  = mean over valid positions of  -log softmax(student_logits)[target]
    L   = alpha * KD + (1 - alpha) * CE

Valid positions are response tokens: prompt and padding are masked (mask == 0) and CE
targets equal to `ignore_index` are ignored. The `*_sum` forms return (sum, count) so that a
trainer normalises over the valid tokens of the whole optimiser step (all micro-batches,
all ranks), not per micro-batch. The teacher never receives a gradient (stop_gradient).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx
import numpy as np

IGNORE_INDEX = -100
EPS = 1e-12


def valid_mask(shape: tuple[int, ...], mask: mx.array | None) -> mx.array:
    if mask is None:
        return mx.ones(shape, dtype=mx.float32)
    return mask.astype(mx.float32)


def log_softmax(x: mx.array, temperature: float = 1.0) -> mx.array:
    x = x.astype(mx.float32)
    if temperature != 1.0:
        x = x / temperature
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def kd_loss_sum(
    teacher_logits: mx.array,
    student_logits: mx.array,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """T^2 * sum over valid positions of KL(P_T || Q_T), and the number of valid positions."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {teacher_logits.shape} and student logits "
            f"{student_logits.shape} differ; align the vocabularies first "
            "(align_vocab_sizes)"
        )
    log_p = log_softmax(mx.stop_gradient(teacher_logits), temperature)
    log_q = log_softmax(student_logits, temperature)
    kl = (mx.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    m = valid_mask(kl.shape, mask)
    return (temperature**2) * (kl * m).sum(), m.sum()


def compute_kd_loss(
    teacher_logits: mx.array,
    student_logits: mx.array,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> mx.array:
    """KL(P_teacher || P_student) at temperature T on [batch, seq, vocab], scaled by T^2,
    averaged over the valid positions (all positions when mask is None)."""
    total, count = kd_loss_sum(teacher_logits, student_logits, temperature, mask)
    return total / mx.maximum(count, 1.0)


def ce_loss_sum(
    logits: mx.array,
    targets: mx.array,
    ignore_index: int = IGNORE_INDEX,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Sum of -log softmax(logits)[target] over valid positions, and their count."""
    valid = targets != ignore_index
    if mask is not None:
        valid = mx.logical_and(valid, mask.astype(mx.bool_))
    safe_targets = mx.where(valid, targets, 0)
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    nll = mx.logsumexp(logits, axis=-1) - picked
    v = valid.astype(mx.float32)
    return (nll * v).sum(), v.sum()


def compute_ce_loss(
    logits: mx.array,
    targets: mx.array,
    ignore_index: int = IGNORE_INDEX,
    mask: mx.array | None = None,
) -> mx.array:
    """Cross-entropy with hard labels, mean over targets != ignore_index (and mask)."""
    total, count = ce_loss_sum(logits, targets, ignore_index, mask)
    return total / mx.maximum(count, 1.0)


def sparse_kd_loss_sum(
    student_logits: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """KD against cached top-k soft targets, with the rest of the teacher's mass as one tail.

    topk_ids [.., k] are student-vocabulary ids; topk_logprobs [.., k] are the teacher's
    log P_T at those ids, softened at `temperature` over the teacher's *full* vocabulary
    (so exp(topk_logprobs).sum() <= 1 and the remainder is the tail mass). The student's
    tail is 1 - sum of its own Q_T over the same ids. This is KL over the k+1 buckets
    {id_1..id_k, rest}: exact when the teacher's tail is negligible, a lower bound otherwise.
    Padded slots in topk_logprobs may be -inf (probability 0).
    """
    log_p = mx.stop_gradient(topk_logprobs.astype(mx.float32))
    # Only k entries and one log-sum-exp per position are needed: never build the full
    # log_softmax (at a 152k vocabulary each full pass, and its gradient, is the cost).
    z = student_logits.astype(mx.float32)
    if temperature != 1.0:
        z = z / temperature
    lse = mx.logsumexp(z, axis=-1, keepdims=True)
    log_q = mx.take_along_axis(z, topk_ids.astype(mx.int32), axis=-1) - lse
    kl = topk_kl(log_p, log_q)
    m = valid_mask(kl.shape, mask)
    return (temperature**2) * (kl * m).sum(), m.sum()


def topk_kl(log_p: mx.array, log_q: mx.array) -> mx.array:
    """KL over the k + 1 buckets {top-k ids, rest} per position, from the teacher's log P_T
    and the student's log Q_T at the same ids (the tail of each is 1 - its top-k mass).
    Padded slots (log_p = -inf, p = 0) contribute nothing."""
    p = mx.exp(log_p)
    log_p = mx.where(p > 0, log_p, 0.0)  # keep inf out of the graph
    head = (p * (log_p - log_q)).sum(axis=-1)
    p_tail = mx.maximum(1.0 - p.sum(axis=-1), 0.0)
    q_tail = mx.maximum(1.0 - mx.exp(log_q).sum(axis=-1), EPS)
    tail = mx.where(p_tail > 1e-6, p_tail * (mx.log(mx.maximum(p_tail, EPS)) - mx.log(q_tail)), 0.0)
    return head + tail


def compute_sparse_kd_loss(
    student_logits: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> mx.array:
    total, count = sparse_kd_loss_sum(student_logits, topk_ids, topk_logprobs, temperature, mask)
    return total / mx.maximum(count, 1.0)


def response_ce_sum(z: mx.array, lse1: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
    """Sum of -log softmax(z)[target] over valid response positions, from logsumexp(z) already
    computed (the fused losses share it with their soft-maxes)."""
    vce = mx.logical_and(targets != IGNORE_INDEX, mask > 0)
    picked = mx.take_along_axis(z, mx.where(vce, targets, 0)[..., None], axis=-1)[..., 0]
    return ((lse1 - picked) * vce.astype(mx.float32)).sum()


class SoftPair:
    """softmax(z) and softmax(z / T) of the same logits, for the hand-written backward passes.

    For a whole-number T (the default 2) one exponential per element serves both: with
    u = exp((z - max) / T), sum(u) gives the log-sum-exp at T and sum(u^T) the one at 1; and
    e = exp((z - lse1) / T) gives softmax(z) = e^T and softmax(z/T) = e * exp(lse1/T - lseT).
    exp is the costly op on MLX's CPU backend: this took a [256, 151936] chunk's two
    log-sum-exps from 1.27 s to 0.98 s and its soft-max pass from 1.18 s to 0.64 s."""

    def __init__(self, temperature: float) -> None:
        self.inv_t = 1.0 / temperature
        t = float(temperature)
        self.whole = int(t) if t.is_integer() and 1 <= t <= 8 else 0

    def _power(self, x: mx.array) -> mx.array:  # x ** whole, by multiplication
        out = x
        for _ in range(self.whole - 1):
            out = out * x
        return out

    def log_sum_exps(self, z: mx.array) -> tuple[mx.array, mx.array]:
        """(logsumexp(z), logsumexp(z / T)) over the last axis."""
        if not self.whole:
            return mx.logsumexp(z, axis=-1), mx.logsumexp(z * self.inv_t, axis=-1)
        top = mx.max(z, axis=-1)
        u = mx.exp((z - top[..., None]) * self.inv_t)  # the max gives u = 1: no log(0)
        return top + mx.log(self._power(u).sum(axis=-1)), top * self.inv_t + mx.log(u.sum(axis=-1))

    def softmaxes(self, z: mx.array, lse1: mx.array, lse_t: mx.array) -> tuple[mx.array, mx.array]:
        """(softmax(z), softmax(z / T)) from the log-sum-exps above."""
        if not self.whole:
            return mx.exp(z - lse1[..., None]), mx.exp(z * self.inv_t - lse_t[..., None])
        e = mx.exp((z - lse1[..., None]) * self.inv_t)
        return self._power(e), e * mx.exp(lse1 * self.inv_t - lse_t)[..., None]


def add_at(dz: mx.array, cols: mx.array, vals: mx.array) -> mx.array:
    """dz[.., cols[.., j]] += vals[.., j] for every row (the sparse part of a gradient)."""
    n, v = int(np.prod(cols.shape[:-1])), dz.shape[-1]
    rows = mx.broadcast_to(mx.arange(n)[:, None], (n, cols.shape[-1]))
    return dz.reshape(n, v).at[rows, cols.reshape(n, -1)].add(vals.reshape(n, -1))


def online_loss_sums(
    logits: mx.array,
    teacher_logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    temperature: float,
) -> tuple[mx.array, mx.array]:
    """(KD sum, CE sum) of the online loss on full logits of one vocabulary: the values of
    `kd_loss_sum` + `ce_loss_sum`, with a hand-written gradient (no gradient to the teacher):
        dz = w_ce (softmax(z) - onehot(target)) + w_kd (softmax(z/T) - softmax(t/T))."""
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"teacher logits {teacher_logits.shape} and student logits {logits.shape} differ; "
            "align the vocabularies first (align_vocab_sizes)"
        )
    kd, ce, _, _, _ = _fused_online(float(temperature))(logits, teacher_logits, targets, mask)
    return kd, ce


@cache
def _fused_online(temperature: float) -> Any:
    t = temperature
    inv_t = 1.0 / t
    pair = SoftPair(t)

    @mx.custom_function
    def sums(z, tz, targets, mask):
        z = z.astype(mx.float32)
        lse1, lse_t = pair.log_sum_exps(z)
        tt = tz.astype(mx.float32) * inv_t
        u = mx.exp(tt - mx.max(tt, axis=-1, keepdims=True))
        total = u.sum(axis=-1)
        p = u / total[..., None]
        # KL = sum p (log p - log q) = sum p (t/T - z/T) - lse(t/T) + lse(z/T), as sum p = 1
        lse_tt = mx.max(tt, axis=-1) + mx.log(total)
        kl = (p * (tt - z * inv_t)).sum(axis=-1) - lse_tt + lse_t
        kd = (t * t) * (kl * mask.astype(mx.float32)).sum()
        ce = response_ce_sum(z, lse1, targets, mask)
        return kd, ce, lse1, lse_t, p  # kept for the backward pass

    @sums.vjp
    def sums_vjp(primals, cotangents, outputs):
        z, tz, targets, mask = primals
        g_kd, g_ce = cotangents[0], cotangents[1]
        lse1, lse_t, p = outputs[2], outputs[3], outputs[4]
        w_ce = g_ce * mx.logical_and(targets != IGNORE_INDEX, mask > 0).astype(mx.float32)
        w_kd = (g_kd * t * mask.astype(mx.float32))[..., None]  # T^2 from the loss, 1/T from z/T
        soft, q = pair.softmaxes(z.astype(mx.float32), lse1, lse_t)
        dz = w_ce[..., None] * soft + w_kd * (q - p)
        dz = add_at(dz, mx.where(w_ce != 0, targets, 0)[..., None], -w_ce[..., None])
        zeros = [mx.zeros_like(a) for a in (tz, targets, mask)]
        return (dz.reshape(z.shape).astype(z.dtype), *zeros)

    return sums


def combined_loss(kd: mx.array, ce: mx.array, alpha: float) -> mx.array:
    """L = alpha * KD + (1 - alpha) * CE (KD already carries its T^2)."""
    return alpha * kd + (1.0 - alpha) * ce


def compute_combined_loss(
    teacher_logits: mx.array,
    student_logits: mx.array,
    targets: mx.array,
    temperature: float = 2.0,
    alpha: float = 0.7,
    ignore_index: int = IGNORE_INDEX,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """(combined, kd, ce) on full logits; KD positions are those with a valid target."""
    valid = targets != ignore_index
    if mask is not None:
        valid = mx.logical_and(valid, mask.astype(mx.bool_))
    kd = compute_kd_loss(teacher_logits, student_logits, temperature, valid)
    ce = compute_ce_loss(student_logits, targets, ignore_index, valid)
    return combined_loss(kd, ce, alpha), kd, ce


def teacher_topk(teacher_logits: mx.array, k: int, temperature: float) -> tuple[mx.array, mx.array]:
    """Top-k ids and their log P_T (softened over the full vocabulary) per position."""
    return topk_of(log_softmax(teacher_logits, temperature), k)


def topk_of(log_p: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """The k largest entries of the last axis, in descending order: (ids, values)."""
    k = min(k, log_p.shape[-1])
    ids = mx.argpartition(-log_p, kth=k - 1, axis=-1)[..., :k]
    vals = mx.take_along_axis(log_p, ids, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    return mx.take_along_axis(ids, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)
