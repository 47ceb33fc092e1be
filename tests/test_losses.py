"""The losses against a NumPy reference: T^2 scaling, KL direction, ignore_index, masks."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from kd_core.losses.core import (
    combined_loss,
    compute_ce_loss,
    compute_combined_loss,
    compute_kd_loss,
    compute_sparse_kd_loss,
    kd_loss_sum,
    teacher_topk,
)


def np_log_softmax(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = x.astype(np.float64) / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(teacher: np.ndarray, student: np.ndarray, t: float, mask: np.ndarray | None = None):
    lp, lq = np_log_softmax(teacher, t), np_log_softmax(student, t)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    m = np.ones(kl.shape) if mask is None else mask
    return t * t * (kl * m).sum() / m.sum()


@pytest.fixture
def logits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(2, 5, 11)).astype(np.float32) * 3,
        rng.normal(size=(2, 5, 11)).astype(np.float32) * 3,
    )


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 5.0])
def test_kd_matches_numpy_with_t_squared(logits, t):
    tl, sl = logits
    got = compute_kd_loss(mx.array(tl), mx.array(sl), temperature=t).item()
    assert got == pytest.approx(np_kd(tl, sl, t), rel=1e-4)


def test_kd_direction_is_teacher_to_student(logits):
    tl, sl = logits
    forward = compute_kd_loss(mx.array(tl), mx.array(sl), 1.0).item()
    reverse = np_kd(sl, tl, 1.0)
    assert forward == pytest.approx(np_kd(tl, sl, 1.0), rel=1e-4)
    assert abs(forward - reverse) > 1e-3  # KL is asymmetric: the direction is observable


def test_kd_zero_for_identical_and_masked_positions(logits):
    tl, sl = logits
    assert compute_kd_loss(mx.array(tl), mx.array(tl), 2.0).item() == pytest.approx(0, abs=1e-6)
    mask = np.zeros((2, 5), np.float32)
    mask[0, 1] = mask[1, 3] = 1
    got = compute_kd_loss(mx.array(tl), mx.array(sl), 2.0, mask=mx.array(mask)).item()
    assert got == pytest.approx(np_kd(tl, sl, 2.0, mask), rel=1e-4)


def test_ce_ignore_index_and_mask(logits):
    _, sl = logits
    targets = np.array([[1, 2, -100, 4, 5], [-100, 0, 10, 3, -100]])
    lp = np_log_softmax(sl)
    valid = targets != -100
    ref = -np.mean([lp[b, t, targets[b, t]] for b, t in zip(*np.nonzero(valid), strict=True)])
    assert compute_ce_loss(mx.array(sl), mx.array(targets)).item() == pytest.approx(ref, rel=1e-5)
    # Matches MLX's own cross-entropy on the valid positions.
    mlx_ce = nn.losses.cross_entropy(mx.array(sl), mx.array(np.where(valid, targets, 0)))
    assert (mlx_ce * mx.array(valid)).sum().item() / valid.sum() == pytest.approx(ref, rel=1e-5)
    mask = np.ones((2, 5), np.float32)
    mask[0, 0] = 0
    ref2 = -np.mean(
        [lp[b, t, targets[b, t]] for b, t in zip(*np.nonzero(valid & (mask > 0)), strict=True)]
    )
    got = compute_ce_loss(mx.array(sl), mx.array(targets), mask=mx.array(mask)).item()
    assert got == pytest.approx(ref2, rel=1e-5)


def test_combined_alpha_endpoints(logits):
    tl, sl = logits
    targets = mx.array(np.random.default_rng(1).integers(0, 11, size=(2, 5)))
    for alpha in (0.0, 0.3, 1.0):
        total, kd, ce = compute_combined_loss(mx.array(tl), mx.array(sl), targets, 2.0, alpha)
        assert total.item() == pytest.approx(alpha * kd.item() + (1 - alpha) * ce.item(), rel=1e-6)
    assert combined_loss(mx.array(3.0), mx.array(5.0), 0.0).item() == 5.0


def test_no_gradient_reaches_the_teacher(logits):
    tl, sl = logits

    def f(t, s):
        return compute_kd_loss(t, s, 2.0)

    gt, gs = mx.grad(f, argnums=(0, 1))(mx.array(tl), mx.array(sl))
    assert np.abs(np.array(gt)).max() == 0.0
    assert np.abs(np.array(gs)).max() > 0.0


def test_sparse_kd_with_full_k_equals_dense(logits):
    tl, sl = logits
    ids, lps = teacher_topk(mx.array(tl), k=11, temperature=2.0)
    dense = compute_kd_loss(mx.array(tl), mx.array(sl), 2.0).item()
    sparse = compute_sparse_kd_loss(mx.array(sl), ids, lps, 2.0).item()
    assert sparse == pytest.approx(dense, rel=1e-4)


def test_sparse_kd_tail_mass_reference(logits):
    tl, sl = logits
    k, t = 3, 2.0
    ids, lps = teacher_topk(mx.array(tl), k=k, temperature=t)
    ids_np, lp_np = np.array(ids), np.array(lps)
    lq = np_log_softmax(sl, t)
    lq_k = np.take_along_axis(lq, ids_np, -1)
    p, q = np.exp(lp_np), np.exp(lq_k)
    p_tail, q_tail = 1 - p.sum(-1), 1 - q.sum(-1)
    kl = (p * (lp_np - lq_k)).sum(-1) + p_tail * (np.log(p_tail) - np.log(q_tail))
    ref = t * t * kl.mean()
    got = compute_sparse_kd_loss(mx.array(sl), ids, lps, t).item()
    assert got == pytest.approx(ref, rel=1e-4)
    # top-k ids are the teacher's most likely tokens, in order
    assert (ids_np[..., 0] == tl.argmax(-1)).all()


def test_step_normalisation_is_over_all_tokens(logits):
    tl, sl = logits
    m1 = np.zeros((2, 5), np.float32)
    m1[0, :4] = 1
    m2 = np.zeros((2, 5), np.float32)
    m2[1, :1] = 1
    s1, c1 = kd_loss_sum(mx.array(tl), mx.array(sl), 2.0, mx.array(m1))
    s2, c2 = kd_loss_sum(mx.array(tl), mx.array(sl), 2.0, mx.array(m2))
    step = (s1 + s2).item() / (c1 + c2).item()
    assert step == pytest.approx(np_kd(tl, sl, 2.0, m1 + m2), rel=1e-4)
    per_micro = (s1.item() / c1.item() + s2.item() / c2.item()) / 2
    assert abs(step - per_micro) > 1e-3


def _reference_offline(z, targets, mask, ids, lps, alpha, t):
    from kd_core.losses.core import ce_loss_sum, sparse_kd_loss_sum

    kd, _ = sparse_kd_loss_sum(z, ids, lps, t, mask)
    ce, _ = ce_loss_sum(z, targets, mask=mask)
    return alpha * kd + (1 - alpha) * ce, (kd, ce)


@pytest.mark.parametrize(
    "t,k,alpha,pad,shape",
    [
        (2.0, 8, 0.7, True, (3, 13)),  # padded (-inf) slots, [B, L, V]
        (1.0, 8, 0.5, False, (29,)),  # T = 1: both soft-maxes are the same
        (3.5, 4, 1.0, False, (2, 9)),  # KD only: the CE weight is 0
        (2.0, 64, 0.7, False, (17,)),  # k = V: no tail mass (the tail term is off)
        (3.0, 8, 0.7, False, (11,)),  # another whole-number T: the shared-exp path
    ],
)
def test_offline_loss_hand_written_gradient_equals_autodiff(t, k, alpha, pad, shape):
    """offline_sums (forward KL) has its own backward pass; it must equal autodiff of the reference
    (sparse_kd_loss_sum + ce_loss_sum) in value and gradient, under mx.compile too."""
    from kd_core.losses.core import IGNORE_INDEX
    from kd_core.losses.divergences import DivergenceSpec, offline_sums

    rng = np.random.default_rng(int(t * 10) + k)
    v = 64
    z = mx.array(rng.normal(size=(*shape, v)).astype(np.float32) * 3)
    targets = rng.integers(0, v, shape).astype(np.int32)
    targets.reshape(-1)[::5] = IGNORE_INDEX
    mask = (rng.random(shape) > 0.25).astype(np.float32)
    teacher = rng.normal(size=(*shape, v)) * 2 / t
    logp = teacher - np.log(np.exp(teacher).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[..., :k].astype(np.int32)
    lps = np.take_along_axis(logp, ids, -1).astype(np.float32)
    if pad:
        lps[..., -2:] = -np.inf
    args = (mx.array(targets), mx.array(mask), mx.array(ids), mx.array(lps))

    def fused(z):
        kd, ce = offline_sums(z, *args, t, DivergenceSpec())
        return alpha * kd + (1 - alpha) * ce, (kd, ce)

    (l_ref, (kd_ref, ce_ref)), g_ref = mx.value_and_grad(
        lambda z: _reference_offline(z, *args, alpha, t)
    )(z)
    for fn in (mx.value_and_grad(fused), mx.compile(mx.value_and_grad(fused))):
        (l_new, (kd_new, ce_new)), g_new = fn(z)
        assert l_new.item() == pytest.approx(l_ref.item(), rel=1e-5)
        assert kd_new.item() == pytest.approx(kd_ref.item(), rel=1e-5, abs=1e-6)
        assert ce_new.item() == pytest.approx(ce_ref.item(), rel=1e-5)
        scale = float(mx.abs(g_ref).max().item())
        assert scale > 0 and float(mx.abs(g_new - g_ref).max().item()) <= 1e-5 * scale


@pytest.mark.parametrize("t,alpha", [(2.0, 0.7), (1.0, 0.5), (2.5, 1.0), (4.0, 0.3)])
def test_online_loss_hand_written_gradient_equals_autodiff(t, alpha):
    """online_loss_sums (the trainer's online path) against autodiff of kd_loss_sum +
    ce_loss_sum: same values, same student gradient, none for the teacher."""
    from kd_core.losses.core import IGNORE_INDEX, ce_loss_sum, kd_loss_sum, online_loss_sums

    rng = np.random.default_rng(int(t * 10))
    shape, v = (3, 11), 48
    z = mx.array(rng.normal(size=(*shape, v)).astype(np.float32) * 3)
    tz = mx.array(rng.normal(size=(*shape, v)).astype(np.float32) * 4)
    targets = rng.integers(0, v, shape).astype(np.int32)
    targets.reshape(-1)[::4] = IGNORE_INDEX
    targets, mask = mx.array(targets), mx.array((rng.random(shape) > 0.3).astype(np.float32))

    def reference(z, tz):
        kd, _ = kd_loss_sum(tz, z, t, mask)
        ce, _ = ce_loss_sum(z, targets, mask=mask)
        return alpha * kd + (1 - alpha) * ce

    def fused(z, tz):
        kd, ce = online_loss_sums(z, tz, targets, mask, t)
        return alpha * kd + (1 - alpha) * ce

    l_ref, (g_ref, gt_ref) = mx.value_and_grad(reference, argnums=(0, 1))(z, tz)
    grad_fn = mx.value_and_grad(fused, argnums=(0, 1))
    for fn in (grad_fn, mx.compile(grad_fn)):
        l_new, (g_new, gt_new) = fn(z, tz)
        assert l_new.item() == pytest.approx(l_ref.item(), rel=1e-5)
        scale = float(mx.abs(g_ref).max().item())
        assert scale > 0 and float(mx.abs(g_new - g_ref).max().item()) <= 1e-5 * scale
        assert float(mx.abs(gt_ref).max().item()) == 0.0  # stop_gradient in the reference
        assert float(mx.abs(gt_new).max().item()) == 0.0
