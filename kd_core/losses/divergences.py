"""The divergences the KD term can use, on full logits and on top-k + tail buckets.

P = softmax(teacher / T) (the teacher), Q = softmax(student / T), per position, each
scaled by T^2 and summed over the valid positions like forward KL (docs/ARCHITECTURE.md):

    forward_kl  sum P (log P - log Q)                          mass-covering (classic KD)
    reverse_kl  sum Q (log Q - log P)                          mode-seeking (on-policy)
    jsd         beta KL(P||M) + (1-beta) KL(Q||M),  M = beta P + (1-beta) Q   (TRL's GKD)
    skew_kl     KL(P || s P + (1-s) Q)                          (DistiLLM)
    tvd         1/2 sum |P - Q|

`compute_divergence` is the readable reference (autodiff of the formula). Offline, the
teacher is its top-k log-probabilities plus one tail bucket, and each divergence is taken
over those k + 1 buckets (as `losses.topk_kl` does for forward KL). Offline, every divergence
goes through one hand-written backward (`fused_offline`, the divergence its parameter): with
the student's bucket log-probs lq_j = z_{id_j}/T - lse(z/T),
    d D / d(z/T) = scatter_k(h) - softmax(z/T) * sum_j h_j,    h = d D / d lq
so the vocabulary sees one element-wise pass. h is written out for forward KL (measured
fastest, bench/run.py) and comes from autodiff over the k + 1 buckets for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args

import mlx.core as mx

from kd_core.config import Divergence
from kd_core.losses.core import (
    EPS,
    IGNORE_INDEX,
    SoftPair,
    add_at,
    ce_loss_sum,
    kd_loss_sum,
    log_softmax,
    online_loss_sums,
    response_ce_sum,
    sparse_kd_loss_sum,
    topk_kl,
    valid_mask,
)

DIVERGENCES: tuple[str, ...] = get_args(Divergence)
# Floor of the tail buckets' mass in the non-forward divergences: a top-k + tail split only
# knows the tail to about this (float16 targets, float32 sums), and a reverse KL against a
# tail of exactly 0 would be infinite.
TAIL_FLOOR = 1e-6


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence, with its parameter (hashable: the fused losses are cached by it)."""

    kind: str = "forward_kl"
    beta: float = 0.5
    skew: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in DIVERGENCES:
            raise ValueError(
                f"divergence: {self.kind!r} is not allowed; use one of "
                + ", ".join(repr(d) for d in DIVERGENCES)
            )
        for name, value in (("jsd_beta", self.beta), ("skew", self.skew)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name}: {value!r} is out of range; allowed above 0 below 1")

    @staticmethod
    def of(cfg: Any) -> DivergenceSpec:
        """The spec of a KDConfig (only the parameter its divergence uses, so that the cache
        of compiled losses is not split by settings that do not matter)."""
        kind = cfg.divergence
        return DivergenceSpec(
            kind,
            cfg.jsd_beta if kind == "jsd" else 0.5,
            cfg.skew if kind == "skew_kl" else 0.1,
        )


def divergence_terms(
    log_p: mx.array, log_q: mx.array, spec: DivergenceSpec, valid: mx.array | None = None
) -> mx.array:
    """D(P, Q) per position over the last axis, from log-probabilities. `valid` marks the
    buckets that exist (others count as probability 0 on both sides)."""
    if valid is not None:
        log_p = mx.where(valid, log_p, 0.0)  # keep -inf out of the graph
        log_q = mx.where(valid, log_q, 0.0)
    p, q = mx.exp(log_p), mx.exp(log_q)
    if valid is not None:
        p, q = p * valid, q * valid
    kind = spec.kind
    if kind == "forward_kl":
        return (p * (log_p - log_q)).sum(axis=-1)
    if kind == "reverse_kl":
        return (q * (log_q - log_p)).sum(axis=-1)
    if kind == "tvd":
        return 0.5 * mx.abs(p - q).sum(axis=-1)
    w = spec.beta if kind == "jsd" else spec.skew  # the teacher's share of the mixture M
    log_m = mx.logaddexp(log_p + math.log(w), log_q + math.log(1.0 - w))
    to_m = (p * (log_p - log_m)).sum(axis=-1)  # KL(P || M)
    if kind == "skew_kl":
        return to_m
    return w * to_m + (1.0 - w) * (q * (log_q - log_m)).sum(axis=-1)


def divergence_sum(
    teacher_logits: mx.array,
    student_logits: mx.array,
    spec: DivergenceSpec,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """T^2 * sum over valid positions of D(P_T, Q_T) on full logits, and the count."""
    if spec.kind == "forward_kl":
        return kd_loss_sum(teacher_logits, student_logits, temperature, mask)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {teacher_logits.shape} and student logits "
            f"{student_logits.shape} differ; align the vocabularies first (align_vocab_sizes)"
        )
    log_p = log_softmax(mx.stop_gradient(teacher_logits), temperature)
    log_q = log_softmax(student_logits, temperature)
    d = divergence_terms(log_p, log_q, spec)
    m = valid_mask(d.shape, mask)
    return (temperature**2) * (d * m).sum(), m.sum()


def compute_divergence(
    teacher_logits: mx.array,
    student_logits: mx.array,
    divergence: str = "forward_kl",
    temperature: float = 2.0,
    beta: float = 0.5,
    skew: float = 0.1,
    mask: mx.array | None = None,
) -> mx.array:
    """The divergence (P = teacher, Q = student) at temperature T on [.., vocab] logits,
    scaled by T^2, averaged over the valid positions (all when mask is None): the reference
    the fast paths are tested against."""
    spec = DivergenceSpec(divergence, beta, skew)
    total, count = divergence_sum(teacher_logits, student_logits, spec, temperature, mask)
    return total / mx.maximum(count, 1.0)


def topk_buckets(log_p: mx.array, log_q: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """The k + 1 buckets {top-k ids, rest}: (log P, log Q, valid) with the tails appended.
    Padded slots (log P = -inf) are not buckets; the student's mass there is in its tail."""
    valid = log_p > -mx.inf
    p = mx.where(valid, mx.exp(log_p), 0.0)
    q = mx.where(valid, mx.exp(log_q), 0.0)
    p_tail = mx.maximum(1.0 - p.sum(axis=-1, keepdims=True), TAIL_FLOOR)
    q_tail = mx.maximum(1.0 - q.sum(axis=-1, keepdims=True), TAIL_FLOOR)
    lp = mx.concatenate([mx.where(valid, log_p, 0.0), mx.log(p_tail)], axis=-1)
    lq = mx.concatenate([mx.where(valid, log_q, 0.0), mx.log(q_tail)], axis=-1)
    return lp, lq, mx.concatenate([valid, mx.ones_like(p_tail).astype(mx.bool_)], axis=-1)


def topk_terms(log_p: mx.array, log_q: mx.array, spec: DivergenceSpec) -> mx.array:
    lp, lq, valid = topk_buckets(log_p, log_q)
    return divergence_terms(lp, lq, spec, valid)


def sparse_divergence_sum(
    student_logits: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    spec: DivergenceSpec,
    temperature: float = 2.0,
    mask: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """The readable offline reference: D over the k + 1 buckets, T^2-scaled, summed."""
    if spec.kind == "forward_kl":
        return sparse_kd_loss_sum(student_logits, topk_ids, topk_logprobs, temperature, mask)
    z = student_logits.astype(mx.float32) / temperature
    lse = mx.logsumexp(z, axis=-1, keepdims=True)
    log_q = mx.take_along_axis(z, topk_ids.astype(mx.int32), axis=-1) - lse
    d = topk_terms(mx.stop_gradient(topk_logprobs.astype(mx.float32)), log_q, spec)
    m = valid_mask(d.shape, mask)
    return (temperature**2) * (d * m).sum(), m.sum()


def offline_sums(
    logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    topk_ids: mx.array,
    topk_logprobs: mx.array,
    temperature: float,
    spec: DivergenceSpec,
) -> tuple[mx.array, mx.array]:
    """(KD sum, CE sum) of the offline loss for any divergence (the fused and chunked steps
    call this; alpha = 0 never comes here: kd_core/steps/fused.CEStep). The same values as
    `sparse_divergence_sum` + `ce_loss_sum` (the readable reference), with a hand-written
    gradient: autodiff of the two made two zero-filled [.., V] tensors for the gathers and
    two separate soft-max passes."""
    kd, ce, _, _ = fused_offline(float(temperature), spec)(
        logits, targets, mask, topk_ids.astype(mx.int32), topk_logprobs
    )
    return kd, ce


def _forward_kl_grad(lps: mx.array, log_q: mx.array, w_kd: mx.array) -> tuple[mx.array, mx.array]:
    """Forward KL's bucket gradient written out: with p the teacher's top-k probabilities
    (sum P), q_k the student's at the same ids (sum Q) and c = p_tail / q_tail when the tail
    bucket counts, h = w (c q_k - p) and the softmax(z/T) coefficient is w (P - c Q)."""
    p = mx.exp(lps)
    q_k = mx.exp(log_q)
    big_p, big_q = p.sum(axis=-1), q_k.sum(axis=-1)
    p_tail, q_rest = mx.maximum(1.0 - big_p, 0.0), 1.0 - big_q
    c = mx.where(mx.logical_and(p_tail > 1e-6, q_rest > EPS), p_tail / mx.maximum(q_rest, EPS), 0.0)
    return w_kd[..., None] * (c[..., None] * q_k - p), w_kd * (big_p - c * big_q)


@cache
def fused_offline(temperature: float, spec: DivergenceSpec) -> Any:
    """KD (`spec` over the k + 1 buckets, T^2-scaled) + CE sums on logits [.., V] with their
    gradient in one pass over V (see the module's docstring). The two soft-maxes share their
    exponentials (`SoftPair`). tests/test_losses.py and tests/test_divergences.py check values
    and gradients against the autodiff reference."""
    t, inv_t, pair = temperature, 1.0 / temperature, SoftPair(temperature)
    forward = spec.kind == "forward_kl"

    def terms(lps: mx.array, log_q: mx.array) -> mx.array:
        return topk_kl(lps, log_q) if forward else topk_terms(lps, log_q, spec)

    def bucket_log_q(zf, ids, lse_t):
        return mx.take_along_axis(zf, ids, axis=-1) * inv_t - lse_t[..., None]

    @mx.custom_function
    def sums(z, targets, mask, ids, lps):
        z = z.astype(mx.float32)
        lse1, lse_t = pair.log_sum_exps(z)
        ce = response_ce_sum(z, lse1, targets, mask)
        d = terms(lps.astype(mx.float32), bucket_log_q(z, ids, lse_t))
        kd = (t * t) * (d * mask.astype(mx.float32)).sum()
        return kd, ce, lse1, lse_t  # the log-sum-exps are kept for the backward pass

    @sums.vjp
    def sums_vjp(primals, cotangents, outputs):
        z, targets, mask, ids, lps = primals
        g_kd, g_ce = cotangents[0], cotangents[1]
        lse1, lse_t = outputs[2], outputs[3]
        zf = z.astype(mx.float32)
        w_ce = g_ce * mx.logical_and(targets != IGNORE_INDEX, mask > 0).astype(mx.float32)
        w_kd = g_kd * t * mask.astype(mx.float32)  # T^2 from the loss, 1/T from z/T
        lp32, log_q = lps.astype(mx.float32), bucket_log_q(zf, ids, lse_t)
        if forward:
            h, q_coef = _forward_kl_grad(lp32, log_q, w_kd)
        else:
            _, (h,) = mx.vjp(lambda lq: terms(lp32, lq), [log_q], [w_kd])
            q_coef = -h.sum(axis=-1)
        soft, q = pair.softmaxes(zf, lse1, lse_t)
        dz = w_ce[..., None] * soft + q_coef[..., None] * q
        cols = mx.concatenate([mx.where(w_ce != 0, targets, 0)[..., None], ids], axis=-1)
        dz = add_at(dz, cols, mx.concatenate([-w_ce[..., None], h], axis=-1))
        zeros = [mx.zeros_like(a) for a in (targets, mask, ids, lps)]
        return (dz.reshape(z.shape).astype(z.dtype), *zeros)

    return sums


def online_sums(
    logits: mx.array,
    teacher_logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    temperature: float,
    spec: DivergenceSpec,
) -> tuple[mx.array, mx.array]:
    """(KD sum, CE sum) on full logits of one vocabulary; forward_kl is the fused
    `losses.online_loss_sums`, the others autodiff of the formula (measured: bench/run.py)."""
    if spec.kind == "forward_kl":
        return online_loss_sums(logits, teacher_logits, targets, mask, temperature)
    kd, _ = divergence_sum(teacher_logits, logits, spec, temperature, mask)
    ce, _ = ce_loss_sum(logits, targets, mask=mask)
    return kd, ce
