"""alpha = 0 is plain CE fine-tuning, decided once (steps/fused.make_step): the CE step is
chosen for every mode and pair, it never runs the teacher, and its loss is exactly CE."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm import load

from kd_core.config import KDConfig
from kd_core.examples.batch import Example, TeacherTokens, make_batch
from kd_core.losses.core import ce_loss_sum
from kd_core.runtime.cpu_streams import StreamSet
from kd_core.steps.chunked import ChunkedCEStep
from kd_core.steps.fused import CEStep, OfflineStep, OnlineStep, make_step
from kd_core.train.trainer import apply_lora
from kd_core.vocab.plan import VocabAlignment


class _NoTeacher:
    """A teacher that must not be asked: plain CE reads none."""

    def __call__(self, *_: object) -> mx.array:
        raise AssertionError("the CE-only step ran the teacher")


def _online_examples(vocab: int) -> list[Example]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(3):
        toks = rng.integers(1, vocab, size=int(rng.integers(15, 30))).astype(np.int32)
        out.append(Example(toks, 5, toks[:5], TeacherTokens(toks.copy(), 5)))
    return out


def test_alpha_zero_chooses_the_ce_step_for_every_mode(tiny_pair):
    model, _ = load(str(tiny_pair.student))
    cfg = KDConfig(alpha=0.0, batch_size=3, max_seq_length=64, teacher_mode="online")
    apply_lora(model, cfg)
    vocab = int(model(mx.array([[0]])).shape[-1])
    opt = optim.Adam(learning_rate=1e-4)
    teacher = _NoTeacher()
    aligned = VocabAlignment(
        "align", vocab, vocab, np.arange(vocab), np.arange(vocab), np.arange(vocab), "t", None
    )
    for alignment in (None, aligned):
        step = make_step(model, opt, cfg, StreamSet(1), teacher=teacher, alignment=alignment)
        assert isinstance(step, CEStep)
    chunked = make_step(model, opt, cfg.replace(loss_chunk=8), StreamSet(1), vocab=vocab)
    assert isinstance(chunked, ChunkedCEStep)
    # alpha above 0 is not plain CE: the online step with its teacher.
    kd = make_step(model, opt, cfg.replace(alpha=0.5), StreamSet(1), teacher=teacher)
    assert isinstance(kd, OnlineStep)
    offline = make_step(model, opt, cfg.replace(alpha=0.5, teacher_mode="offline"), StreamSet(1))
    assert isinstance(offline, OfflineStep)

    # Online batches train without the teacher, and the loss is the CE of the response tokens.
    b = make_batch(_online_examples(vocab), cfg.max_seq_length)
    step = make_step(model, opt, cfg, StreamSet(1), teacher=teacher)
    out = step(b, mx.array(1.0 / b.tokens), None, False)
    ce, n = ce_loss_sum(model(mx.array(b.inputs)), mx.array(b.targets), mask=mx.array(b.mask))
    assert out.kd.item() == 0.0 and n.item() == b.tokens
    assert out.ce.item() == ce.item() and out.loss.item() == (ce / b.tokens).item()
