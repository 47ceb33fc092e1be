"""The align loss (kd_core/losses/aligned.py) in chunks of positions, for large vocabularies.

A one-to-one span's terms live at one position, but a longer span's term depends on the sum
of its tokens' log-probabilities, which a chunk boundary may cut. So the step makes a first,
gradient-free pass over the chunks for the student's log Q_T of its own tokens, sums them per
span, and takes the span term's value and its derivative g = d term / d (span log-prob) there.
Each chunk's loss then carries, besides its local terms, g * (log Q_T(token) - the same,
stopped): zero in value, exactly the span term's gradient for every token of the span. The
span terms' value is added to the step's KD once.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from kd_core.examples.aligned import student_only_mask
from kd_core.examples.batch import Batch, BatchSpans
from kd_core.losses.aligned import (
    MULTI,
    binary_kl,
    chosen_log_q,
    one_to_one_terms,
    span_log_probs,
    student_log_q,
)
from kd_core.losses.core import ce_loss_sum, combined_loss
from kd_core.losses.divergences import DivergenceSpec
from kd_core.steps.chunked import ChunkedStep
from kd_core.vocab.plan import VocabAlignment


class ChunkedAlignStep(ChunkedStep):
    def __init__(self, *args: Any, alignment: VocabAlignment, **kw: Any) -> None:
        self.student_only = mx.array(student_only_mask(alignment))
        self._span_kd = mx.array(0.0)
        super().__init__(*args, **kw)
        # T^2, once for this path: on each chunk's terms and on the span terms' value alike.
        self.kd_scale = self.cfg.temperature**2

    def _chunk_loss(self, h, inv, targets, mask, kind, ids, lps, uld, weight):
        cfg = self.cfg
        logits = self.split.head(h)
        ce, _ = ce_loss_sum(logits, targets, mask=mask)
        log_q = student_log_q(logits, cfg.temperature)
        spec = DivergenceSpec.of(cfg)
        local = one_to_one_terms(log_q, kind, ids, lps, uld, self.student_only, spec).sum()
        lq = chosen_log_q(log_q, targets) * mask
        surrogate = (weight * (lq - mx.stop_gradient(lq))).sum()  # value 0, gradient g
        kd = self.kd_scale * (local + surrogate)
        return combined_loss(kd, ce, cfg.alpha) * inv, (kd, ce)

    def _chosen(self, h: mx.array, targets: mx.array) -> mx.array:
        """log Q_T of each position's own token, chunk by chunk, no graph kept: [n]."""
        out = []
        for s in range(0, h.shape[0], self.chunk):
            log_q = student_log_q(self.split.head(h[s : s + self.chunk]), self.cfg.temperature)
            piece = chosen_log_q(log_q, targets[s : s + self.chunk])
            mx.eval(piece)
            out.append(piece)
        return mx.concatenate(out)

    def position_arrays(self, batch: Batch, hs: list[mx.array]) -> list[mx.array]:
        spans = batch.soft
        assert isinstance(spans, BatchSpans) and spans.topk_ids is not None
        targets, mask = mx.array(batch.targets), mx.array(batch.mask)
        B, L = targets.shape
        parts, first = [], 0
        for h in hs:  # the shards are consecutive rows, in order
            rows = targets[first : first + h.shape[0]].reshape(-1)
            parts.append(self._chosen(h.reshape(-1, h.shape[-1]), rows))
            first += h.shape[0]
        lq = mx.concatenate(parts).reshape(B, L) * mask
        kind = mx.array(spans.span_kind).astype(mx.int32)
        multi = (kind == MULTI).astype(mx.float32)
        span_len = mx.maximum(mx.array(spans.span_len), 1)
        t_lp = mx.array(spans.teacher_span_lp)

        def span_terms(lq_: mx.array) -> mx.array:
            return (multi * binary_kl(t_lp, span_log_probs(lq_, span_len))).sum()

        value, d_lq = mx.value_and_grad(span_terms)(lq)
        self._span_kd = value * self.kd_scale
        return [
            targets,
            mask,
            kind,
            mx.array(spans.topk_ids),
            mx.array(spans.topk_logprobs),
            mx.array(spans.uld_logprobs),
            d_lq,  # d (span terms) / d log Q_T(token): g of the span, at each of its tokens
        ]

    def adjust(self, loss: mx.array, kd: mx.array, inv: mx.array) -> tuple[mx.array, mx.array]:
        extra = self._span_kd
        return loss + self.cfg.alpha * extra * inv, kd + extra
