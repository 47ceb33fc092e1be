"""Every divergence against NumPy (values and finite-difference gradients), and the fast
offline (fused), online and chunked forms against `compute_divergence`.

beta and skew are asymmetric (0.3, 0.2) and teacher and student differ, so a swapped sign,
direction or beta changes the numbers these tests compare."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kd_core import compute_divergence
from kd_core.losses.core import IGNORE_INDEX, ce_loss_sum, teacher_topk
from kd_core.losses.divergences import (
    DIVERGENCES,
    TAIL_FLOOR,
    DivergenceSpec,
    divergence_sum,
    offline_sums,
    online_sums,
    sparse_divergence_sum,
)

BETA, SKEW = 0.3, 0.2


def np_log_softmax(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = x.astype(np.float64) / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_terms(lp: np.ndarray, lq: np.ndarray, kind: str) -> np.ndarray:
    """The issue's formulas, written out once more in NumPy (float64)."""
    p, q = np.exp(lp), np.exp(lq)
    if kind == "forward_kl":
        return (p * (lp - lq)).sum(-1)
    if kind == "reverse_kl":
        return (q * (lq - lp)).sum(-1)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if kind == "skew_kl":
        m = SKEW * p + (1 - SKEW) * q
        return (p * (lp - np.log(m))).sum(-1)
    m = BETA * p + (1 - BETA) * q
    return BETA * (p * (lp - np.log(m))).sum(-1) + (1 - BETA) * (q * (lq - np.log(m))).sum(-1)


def np_divergence(tl, sl, kind, t, mask=None) -> float:
    d = np_terms(np_log_softmax(tl, t), np_log_softmax(sl, t), kind)
    m = np.ones(d.shape) if mask is None else mask
    return float(t * t * (d * m).sum() / m.sum())


def np_bucket_divergence(sl, ids, lps, kind, t, mask) -> float:
    """Offline reference: k + 1 buckets {top-k, tail}, tails floored like the engine's."""
    lq_all = np_log_softmax(sl, t)
    lq = np.take_along_axis(lq_all, ids, -1)
    p, q = np.exp(lps.astype(np.float64)), np.exp(lq)
    p_tail = np.maximum(1 - p.sum(-1, keepdims=True), TAIL_FLOOR)
    q_tail = np.maximum(1 - q.sum(-1, keepdims=True), TAIL_FLOOR)
    lp_b = np.concatenate([lps, np.log(p_tail)], -1)
    lq_b = np.concatenate([lq, np.log(q_tail)], -1)
    d = np_terms(lp_b, lq_b, kind)
    return float(t * t * (d * mask).sum() / mask.sum())


def spec(kind: str) -> DivergenceSpec:
    return DivergenceSpec(kind, BETA, SKEW)


@pytest.fixture
def case():
    rng = np.random.default_rng(7)
    shape, v = (2, 6), 24
    tl = (rng.normal(size=(*shape, v)) * 3).astype(np.float32)
    sl = (rng.normal(size=(*shape, v)) * 3).astype(np.float32)
    mask = (rng.random(shape) > 0.3).astype(np.float32)
    targets = rng.integers(0, v, shape).astype(np.int32)
    targets.reshape(-1)[::5] = IGNORE_INDEX
    return tl, sl, mask, targets


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("t", [1.0, 2.0, 3.5])
def test_compute_divergence_matches_numpy(case, kind, t):
    tl, sl, mask, _ = case
    got = compute_divergence(
        mx.array(tl), mx.array(sl), kind, t, beta=BETA, skew=SKEW, mask=mx.array(mask)
    ).item()
    assert got == pytest.approx(np_divergence(tl, sl, kind, t, mask), rel=1e-5)
    same = compute_divergence(mx.array(tl), mx.array(tl), kind, t, beta=BETA, skew=SKEW)
    assert same.item() == pytest.approx(0.0, abs=1e-5)


def test_directions_are_observable(case):
    """Forward and reverse KL differ, reverse KL is forward KL with the roles swapped, and
    jsd with beta is jsd of the swapped pair with 1 - beta."""
    tl, sl, _, _ = case
    t, s = mx.array(tl), mx.array(sl)
    fwd = compute_divergence(t, s, "forward_kl", 1.0).item()
    rev = compute_divergence(t, s, "reverse_kl", 1.0).item()
    assert abs(fwd - rev) > 1e-2
    assert rev == pytest.approx(compute_divergence(s, t, "forward_kl", 1.0).item(), rel=1e-5)
    j = compute_divergence(t, s, "jsd", 1.0, beta=BETA).item()
    assert j == pytest.approx(compute_divergence(s, t, "jsd", 1.0, beta=1 - BETA).item(), rel=1e-5)
    assert abs(j - compute_divergence(t, s, "jsd", 1.0, beta=1 - BETA).item()) > 1e-3


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": 1.0}, {"skew": 1.5}, {"skew": 0.0}])
def test_parameters_out_of_range_are_refused(case, bad):
    tl, sl, _, _ = case
    kind = "jsd" if "beta" in bad else "skew_kl"
    with pytest.raises(ValueError, match="jsd_beta" if "beta" in bad else "skew"):
        compute_divergence(mx.array(tl), mx.array(sl), kind, 2.0, **bad)


def _numeric_grad(f, x: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    g = np.zeros_like(x, dtype=np.float64)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f(x)
        flat[i] = old - eps
        down = f(x)
        flat[i] = old
        gf[i] = (up - down) / (2 * eps)
    return g


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_fused_offline_full_k_equals_reference_and_numpy_gradient(case, kind):
    """Offline with k = V (no tail): the fused loss's value and hand-written gradient equal
    compute_divergence and its autodiff, under mx.compile too, and NumPy's finite
    differences of the formula."""
    tl, sl, mask, targets = case
    t, v = 2.0, tl.shape[-1]
    ids, lps = teacher_topk(mx.array(tl), v, t)
    args = (mx.array(targets), mx.array(mask), ids, lps)

    def fused(z):
        return offline_sums(z, *args, t, spec(kind))[0] / mask.sum()

    def ref(z):
        return compute_divergence(mx.array(tl), z, kind, t, BETA, SKEW, mx.array(mask))

    z = mx.array(sl)
    v_ref, g_ref = mx.value_and_grad(ref)(z)
    for fn in (mx.value_and_grad(fused), mx.compile(mx.value_and_grad(fused))):
        v_new, g_new = fn(z)
        assert v_new.item() == pytest.approx(v_ref.item(), rel=1e-5)
        assert _rel_err(np.array(g_new), np.array(g_ref)) <= 1e-4
    if kind != "tvd":  # |P - Q| has kinks: finite differences are not its derivative
        g_np = _numeric_grad(lambda x: np_divergence(tl, x, kind, t, mask), sl.astype(np.float64))
        assert _rel_err(np.array(g_ref), g_np) <= 1e-3  # float64 differences vs float32


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("pad", [False, True])
def test_fused_offline_topk_tail_equals_bucket_references(case, kind, pad):
    """k < V: the k + 1 bucket form, against the readable MLX reference (value, gradient)
    and NumPy (value); padded (-inf) slots are not buckets."""
    tl, sl, mask, targets = case
    t, k = 2.0, 6
    ids, lps = teacher_topk(mx.array(tl), k, t)
    lps_np = np.array(lps)
    if pad:
        lps_np[..., -2:] = -np.inf
    lps = mx.array(lps_np)
    args = (mx.array(targets), mx.array(mask), ids, lps)

    def fused(z):
        return offline_sums(z, *args, t, spec(kind))[0]

    def ref(z):
        return sparse_divergence_sum(z, ids, lps, spec(kind), t, mx.array(mask))[0]

    z = mx.array(sl)
    v_ref, g_ref = mx.value_and_grad(ref)(z)
    for fn in (mx.value_and_grad(fused), mx.compile(mx.value_and_grad(fused))):
        v_new, g_new = fn(z)
        assert v_new.item() == pytest.approx(v_ref.item(), rel=1e-5)
        assert _rel_err(np.array(g_new), np.array(g_ref)) <= 1e-4
    keep = np.isfinite(lps_np)
    if not pad:  # NumPy's buckets, written independently (padding needs the engine's rule)
        ref_np = np_bucket_divergence(sl, np.array(ids), lps_np, kind, t, mask)
        assert v_ref.item() / mask.sum() == pytest.approx(ref_np, rel=1e-5)
    assert keep.any()


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("alpha", [0.7, 1.0])
def test_fused_offline_keeps_ce_and_its_gradient(case, kind, alpha):
    tl, sl, mask, targets = case
    t, v = 2.0, tl.shape[-1]
    ids, lps = teacher_topk(mx.array(tl), v, t)
    tg, mk = mx.array(targets), mx.array(mask)

    def fused(z):
        kd, ce = offline_sums(z, tg, mk, ids, lps, t, spec(kind))
        return alpha * kd + (1 - alpha) * ce

    def ref(z):
        kd, _ = divergence_sum(mx.array(tl), z, spec(kind), t, mk)
        ce, _ = ce_loss_sum(z, tg, mask=mk)
        return alpha * kd + (1 - alpha) * ce

    z = mx.array(sl)
    (v1, g1), (v2, g2) = mx.value_and_grad(ref)(z), mx.value_and_grad(fused)(z)
    assert v2.item() == pytest.approx(v1.item(), rel=1e-5)
    assert _rel_err(np.array(g2), np.array(g1)) <= 1e-4


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_online_sums_equal_reference(case, kind):
    """The online (full vocabulary) path: values and student gradient of compute_divergence,
    none for the teacher."""
    tl, sl, mask, targets = case
    t = 2.0
    tg, mk = mx.array(targets), mx.array(mask)

    def online(z, tz):
        return online_sums(z, tz, tg, mk, t, spec(kind))[0] / mask.sum()

    def ref(z, tz):
        return compute_divergence(tz, z, kind, t, BETA, SKEW, mk)

    z, tz = mx.array(sl), mx.array(tl)
    v1, (g1, gt1) = mx.value_and_grad(ref, argnums=(0, 1))(z, tz)
    fn = mx.value_and_grad(online, argnums=(0, 1))
    for f in (fn, mx.compile(fn)):
        v2, (g2, gt2) = f(z, tz)
        assert v2.item() == pytest.approx(v1.item(), rel=1e-5)
        assert _rel_err(np.array(g2), np.array(g1)) <= 1e-4
        assert float(mx.abs(gt2).max().item()) == 0.0 == float(mx.abs(gt1).max().item())
