"""The cross-tokenizer span loss (kd_core/losses/aligned.py) against a NumPy reference written
from docs/ARCHITECTURE.md: values within 1e-5 relative, gradients within 1e-4 of central
differences of the reference; with every span one-to-one and every token shared it is exactly
today's offline loss."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from kd_core.losses.aligned import MULTI, ONE_TO_ONE, PIECE, align_loss_sums
from kd_core.losses.divergences import DivergenceSpec, offline_sums

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
            if kind[b, j] == ONE_TO_ONE or kind[b, j] & PIECE:
                keep = np.isfinite(lps[b, j])
                p = np.exp(lps[b, j][keep])
                q = np.exp(log_q[b, j, ids[b, j][keep]])
                pt, qt = max(1 - p.sum(), 1e-6), max(1 - q.sum(), 1e-6)
                kl = (p * np.log(p / q)).sum() + pt * np.log(pt / qt)
                if kind[b, j] & PIECE:  # a projected target: its buckets replace the rest
                    kd += kl
                    continue
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
    # PIECE | ONE_TO_ONE, PIECE | MULTI (its span term replaced), PIECE inside a span
    P1, P2 = PIECE | ONE_TO_ONE, PIECE | MULTI
    kind = np.array([[0, 1, 2, 0, 1, 2, P1], [0, 0, 1, 1, 2, P2, PIECE]])
    span_len = np.array([[1, 1, 2, 1, 1, 2, 1], [1, 1, 1, 1, 3, 2, 1]])
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
    no_piece = list(case)
    no_piece[3] = np.where(case[3] >= PIECE, 0, case[3])
    assert kd > float(_mine(z, no_piece)[0]) + 1e-3


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
        zm, arr(targets, mx.int32), arr(mask), arr(ids, mx.int32), arr(lps), T, DivergenceSpec(),
    )  # fmt: skip
    assert float(kd) == pytest.approx(float(kd0), rel=1e-5)
    assert float(ce) == pytest.approx(float(ce0), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.7, 1.0])
def test_chunked_align_step_equals_the_whole_one(tiny_pair, alpha):
    """The large-vocabulary path: spans cut by chunk boundaries still get their exact value
    and gradient (a first pass for the span sums, a zero-valued surrogate per chunk)."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm import load

    from kd_core.config import KDConfig
    from kd_core.examples.batch import Example, SpanTargets, make_batch
    from kd_core.runtime.cpu_streams import StreamSet
    from kd_core.steps.chunked_aligned import ChunkedAlignStep
    from kd_core.steps.fused import AlignStep, make_step
    from kd_core.train.trainer import apply_lora
    from kd_core.vocab.plan import VocabAlignment

    model, _ = load(str(tiny_pair.student))
    mx.random.seed(0)
    cfg = KDConfig(alpha=alpha, batch_size=3, max_seq_length=64, loss_chunk=10)
    apply_lora(model, cfg)
    params = tree_flatten(model.trainable_parameters())
    model.load_weights([(n, mx.random.normal(v.shape) * 0.01) for n, v in params], strict=False)
    vocab = int(model(mx.array([[0]])).shape[-1])
    shared = np.arange(0, vocab, 2)  # every other token shared: both ULD sides non-empty
    al = VocabAlignment("align", vocab, vocab, shared, shared, np.arange(vocab), "test", None)
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(3):
        toks = rng.integers(1, vocab, size=int(rng.integers(20, 30))).astype(np.int32)
        R = len(toks) - 6
        kind, span_len, j = np.zeros(R, np.int8), np.ones(R, np.int32), 0
        while j < R:  # spans of 1 to 3 student tokens, back to back
            n = min(int(rng.integers(1, 4)), R - j)
            kind[j], span_len[j] = (ONE_TO_ONE if n == 1 and rng.random() < 0.6 else MULTI), n
            j += n
        targets = SpanTargets(
            span_kind=kind,
            span_len=span_len,
            teacher_span_lp=rng.uniform(-5, -0.2, R).astype(np.float32),
            topk_ids=np.stack([rng.permutation(shared)[:K] for _ in range(R)]).astype(np.int32),
            topk_logprobs=np.sort(rng.uniform(-4, -1, (R, K)))[:, ::-1].astype(np.float32),
            uld_logprobs=np.sort(rng.uniform(-6, -3, (R, K)))[:, ::-1].astype(np.float32),
            teacher_span=np.zeros((R, 2), np.int32),
        )
        examples.append(Example(toks, 6, toks[:6], targets))
    b = make_batch(examples, cfg.max_seq_length)
    inv = mx.array(1.0 / b.tokens)
    opt = optim.Adam(learning_rate=1e-3)
    opt.init(model.trainable_parameters())
    whole = AlignStep(model, opt, cfg, lambda g: g, StreamSet(1), al)(b, inv, None, False)
    step = make_step(model, opt, cfg, StreamSet(1), alignment=al, vocab=vocab)
    assert isinstance(step, ChunkedAlignStep)
    part = step(b, inv, None, False)
    assert part.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    assert part.kd.item() == pytest.approx(whole.kd.item(), rel=1e-5)
    assert part.ce.item() == pytest.approx(whole.ce.item(), rel=1e-5)
    g1, g2 = dict(tree_flatten(whole.grad)), dict(tree_flatten(part.grad))
    for name in g1:
        a, c = np.array(g1[name]), np.array(g2[name])
        assert np.abs(a - c).max() <= 1e-4 * max(np.abs(a).max(), 1e-12), name
