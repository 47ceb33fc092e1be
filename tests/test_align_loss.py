"""The cross-tokenizer span loss (kd_core/align_loss.py) against a NumPy reference written
from docs/ARCHITECTURE.md: values within 1e-5 relative, gradients within 1e-4 of central
differences of the reference; with every span one-to-one and every token shared it is exactly
today's offline loss."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kd_core.align_loss import MULTI, ONE_TO_ONE, align_loss_sums
from kd_core.divergences import DivergenceSpec, offline_sums

B, L, V, K, T = 2, 7, 13, 3, 2.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference(z, targets, mask, kind, span_len, t_span_lp, ids, lps, uld, only, temp, uld_w=1.0):
    """KD sum (T^2-scaled) and CE sum, position by position, in float64."""
    log_q = _log_softmax(z / temp)
    log_q1 = _log_softmax(z)
    kd = ce = 0.0
    for b in range(z.shape[0]):
        for j in range(z.shape[1]):
            if mask[b, j]:
                ce -= log_q1[b, j, targets[b, j]]
            if kind[b, j] == ONE_TO_ONE:
                keep = np.isfinite(lps[b, j])
                p = np.exp(lps[b, j][keep])
                q = np.exp(log_q[b, j, ids[b, j][keep]])
                pt, qt = max(1 - p.sum(), 1e-6), max(1 - q.sum(), 1e-6)
                kl = (p * np.log(p / q)).sum() + pt * np.log(pt / qt)
                u = np.exp(uld[b, j])  # sorted teacher remainder, 0 padded
                w = np.sort(np.exp(log_q[b, j]) * only)[::-1][: len(u)]
                kd += kl + uld_w * np.abs(u - w).sum()
            elif kind[b, j] == MULTI:
                n = span_len[b, j]
                lq = sum(log_q[b, i, targets[b, i]] * mask[b, i] for i in range(j, j + n))
                lp = min(t_span_lp[b, j], -1e-4)
                lq = min(lq, -1e-4)
                p, q = np.exp(lp), np.exp(lq)
                kd += p * (lp - lq) + (1 - p) * (np.log1p(-p) - np.log1p(-q))
    return temp**2 * kd, ce


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(B, L, V)) * 1.5
    targets = rng.integers(0, V, size=(B, L))
    mask = np.ones((B, L))
    mask[0, 0] = mask[1, :2] = 0  # prompt positions
    kind = np.array([[0, 1, 2, 0, 1, 2, 0], [0, 0, 1, 1, 2, 0, 1]])
    span_len = np.array([[1, 1, 2, 1, 1, 2, 1], [1, 1, 1, 1, 3, 1, 1]])
    t_span_lp = rng.uniform(-6, -0.5, size=(B, L))
    ids = np.stack([rng.permutation(V)[:K] for _ in range(B * L)]).reshape(B, L, K)
    lps = np.sort(rng.uniform(-4, -0.7, size=(B, L, K)), axis=-1)[..., ::-1].copy()
    lps[0, 1, 2] = -np.inf  # a teacher top-k token the student lacks ...
    uld = np.full((B, L, K), -np.inf)
    uld[0, 1, 0] = -3.0  # ... lands in the remainder
    uld[1, 3, :2] = [-2.5, -3.5]
    only = np.zeros(V)
    only[[4, 9, 11]] = 1.0  # student tokens the teacher lacks
    return z, targets, mask, kind, span_len, t_span_lp, ids, lps, uld, only


def _mine(z, c, spec=DivergenceSpec()):
    _, targets, mask, kind, span_len, t_lp, ids, lps, uld, only = c
    arr = lambda a, dt=mx.float32: mx.array(np.asarray(a), dtype=dt)  # noqa: E731
    return align_loss_sums(
        z, arr(targets, mx.int32), arr(mask), arr(kind, mx.int32), arr(span_len, mx.int32),
        arr(t_lp), arr(ids, mx.int32), arr(lps), arr(uld), arr(only), T, spec,
    )  # fmt: skip


def test_values_match_the_reference(case):
    kd, ce = _mine(mx.array(case[0], dtype=mx.float32), case)
    ref_kd, ref_ce = reference(*case, T)
    assert float(kd) == pytest.approx(ref_kd, rel=1e-5)
    assert float(ce) == pytest.approx(ref_ce, rel=1e-5)


def test_gradients_match_central_differences(case):
    z0 = case[0]
    grad = mx.grad(lambda z: _mine(z, case)[0])(mx.array(z0, dtype=mx.float32))
    num = np.zeros_like(z0)
    h = 1e-5
    for idx in np.ndindex(z0.shape):
        up, dn = z0.copy(), z0.copy()
        up[idx] += h
        dn[idx] -= h
        num[idx] = (reference(up, *case[1:], T)[0] - reference(dn, *case[1:], T)[0]) / (2 * h)
    np.testing.assert_allclose(np.array(grad), num, atol=1e-4, rtol=1e-3)


def test_each_part_counts(case):
    """The ULD weight and the span term both move the loss (a dropped term fails here)."""
    z = mx.array(case[0], dtype=mx.float32)
    kd = float(_mine(z, case)[0])
    assert kd == pytest.approx(reference(*case, T)[0], rel=1e-5)
    assert kd != pytest.approx(reference(*case, T, uld_w=0.0)[0], rel=1e-3)
    no_multi = list(case)
    no_multi[3] = np.where(case[3] == MULTI, 0, case[3])
    assert kd > float(_mine(z, no_multi)[0]) + 1e-3


def test_one_to_one_with_every_token_shared_is_todays_offline_loss(case):
    """One tokenizer seen through the align path: every span one token, no remainder."""
    z, targets, mask, _, span_len, t_lp, ids, lps, _, _ = case
    lps = lps.copy()
    lps[~np.isfinite(lps)] = -5.0
    kind = mask.astype(int) * ONE_TO_ONE
    c = (z, targets, mask, kind, span_len, t_lp, ids, lps, np.full((B, L, K), -np.inf), np.zeros(V))
    zm = mx.array(z, dtype=mx.float32)
    kd, ce = _mine(zm, c)
    arr = lambda a, dt=mx.float32: mx.array(np.asarray(a), dtype=dt)  # noqa: E731
    kd0, ce0 = offline_sums(
        zm, arr(targets, mx.int32), arr(mask), arr(ids, mx.int32), arr(lps), 0.5, T,
        DivergenceSpec(),
    )  # fmt: skip
    assert float(kd) == pytest.approx(float(kd0), rel=1e-5)
    assert float(ce) == pytest.approx(float(ce0), rel=1e-5)
