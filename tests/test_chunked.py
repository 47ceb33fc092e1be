"""The chunked two-phase loss gives the fused loss and gradients, without [B, L, V] logits."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from kd_core.config import KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import Step
from kd_core.examples.batch import Example, SoftTargets, make_batch
from kd_core.losses.core import teacher_topk
from kd_core.runtime.cpu_streams import StreamSet
from kd_core.steps.chunked import ChunkedCEStep, ChunkedStep, split_model, want_chunking
from kd_core.steps.fused import CEStep, OfflineStep, make_step
from kd_core.train.trainer import apply_lora


def _examples(vocab: int, n: int = 4, k: int = 8) -> list[Example]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = rng.integers(1, vocab, size=int(rng.integers(20, 40))).astype(np.int32)
        plen = 7
        r = len(toks) - plen
        ids, lps = teacher_topk(
            mx.array(rng.normal(size=(r, vocab)).astype(np.float32) * 2), k, 2.0
        )
        targets = SoftTargets(np.array(ids), np.array(lps))
        out.append(Example(toks, plen, toks[:plen], targets))
    return out


def test_auto_threshold():
    assert want_chunking(0, 4, 512, 151_936) > 0  # Qwen's vocabulary: chunk
    assert want_chunking(0, 4, 256, 8192) == 0  # small vocabulary: fused is cheaper
    assert want_chunking(-1, 4, 512, 151_936) == 0 and want_chunking(64, 1, 8, 10) == 64


@pytest.mark.parametrize(
    "alpha,divergence",
    [(0.7, "forward_kl"), (0.0, "forward_kl"), (0.7, "reverse_kl"), (0.7, "jsd"), (1.0, "tvd")]
    + [(0.7, "skew_kl")],
)
def test_chunked_gradients_equal_fused(tiny_pair, tmp_path, alpha, divergence):
    model, _ = load(str(tiny_pair.student))
    mx.random.seed(0)
    cfg = KDConfig(
        alpha=alpha,
        batch_size=4,
        max_seq_length=64,
        loss_chunk=24,
        divergence=divergence,
        jsd_beta=0.3,
        skew=0.2,
    )
    apply_lora(model, cfg)
    vocab = int(model(mx.array([[0]])).shape[-1])
    ex = _examples(vocab)
    # Give lora_b non-zero values so every LoRA gradient is non-trivial.
    params = tree_flatten(model.trainable_parameters())
    model.load_weights([(k, mx.random.normal(v.shape) * 0.01) for k, v in params], strict=False)
    opt = optim.Adam(learning_rate=cfg.learning_rate)
    opt.init(model.trainable_parameters())
    b = make_batch(ex, cfg.max_seq_length)
    inv = mx.array(1.0 / b.tokens)
    # The same choice make_step makes unchunked: OfflineStep, or CEStep at alpha = 0.
    fused = make_step(model, opt, cfg.replace(loss_chunk=-1), StreamSet(1), vocab=vocab)
    assert isinstance(fused, CEStep if alpha == 0.0 else OfflineStep)
    out1 = fused(b, inv, None, False)
    l1, kd1, ce1, g1 = out1.loss, out1.kd, out1.ce, out1.grad
    chunked = make_step(model, opt, cfg, StreamSet(1), vocab=vocab)
    assert isinstance(chunked, ChunkedCEStep if alpha == 0.0 else ChunkedStep)
    assert chunked.chunk == 24
    out2 = chunked(b, inv, None, False)
    l2, kd2, ce2, g2 = out2.loss, out2.kd, out2.ce, out2.grad
    assert l2.item() == pytest.approx(l1.item(), rel=1e-5)
    assert kd2.item() == pytest.approx(kd1.item(), rel=1e-5, abs=1e-6)
    assert ce2.item() == pytest.approx(ce1.item(), rel=1e-5)
    f1, f2 = dict(tree_flatten(g1)), dict(tree_flatten(g2))
    assert f1.keys() == f2.keys()
    for k in f1:
        a, c = np.array(f1[k]), np.array(f2[k])
        assert np.allclose(a, c, rtol=1e-3, atol=1e-6 * max(1.0, np.abs(a).max())), k
        assert np.abs(a - c).max() <= 1e-4 * max(np.abs(a).max(), 1e-12), k


def test_split_model_checks_the_real_model(tiny_pair):
    model, _ = load(str(tiny_pair.student))
    assert split_model(model) is None  # a trainable head needs its gradient: no split
    model.freeze()
    split = split_model(model)
    x = mx.array([[3, 4, 5]])
    assert split is not None
    assert mx.allclose(split.head(split.body(x)), model(x), atol=1e-5).item()


@pytest.mark.slow
def test_chunked_run_matches_fused_run(tiny_pair, tmp_path):
    def run(chunk: int) -> list[float]:
        events: list = []
        cfg = KDConfig(
            num_iters=3,
            max_tokens=12,
            batch_size=2,
            max_seq_length=64,
            loss_chunk=chunk,
            output=str(tmp_path / f"o{chunk}"),
        )
        TrueKnowledgeDistiller(
            str(tiny_pair.teacher), str(tiny_pair.student), cfg, on_event=events.append
        ).distill_domain("task")
        return [e.combined for e in events if isinstance(e, Step)]

    fused, chunked = run(-1), run(16)
    assert fused == pytest.approx(chunked, rel=1e-4)
    rows = (tmp_path / "o16" / "task" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads(rows[0])["step"] == 1
