"""One training step interface and its implementations, chosen once per trainer.

    step(batch, inv_count, prev_grad, do_update) -> StepOutput(loss, kd, ce, grad)

`batch` is one micro-batch (kd_core.examples.batch.Batch, numpy arrays); `inv_count` is 1 / the
number of valid response tokens in the whole optimiser step (all micro-batches, all processes),
known on the host before the step, so no host round-trip happens inside it; `prev_grad` is the
gradient accumulated over the step's earlier micro-batches; with `do_update` the optimiser
applies the (all-process) gradient and `grad` comes back None. Every step computes L = alpha *
KD + (1 - alpha) * CE through `losses.combined_loss`, KD being the configured divergence
(kd_core/losses/divergences.py; forward KL by default).

- CEStep:      alpha = 0, plain CE (no teacher, no soft targets), chosen once by make_step;
  ChunkedCEStep the same in chunks of positions.
- OfflineStep: KD against the cached top-k soft targets, one compiled value_and_grad.
- OnlineStep:  the teacher's full distribution, its forward outside the compiled student step.
- ChunkedStep (kd_core/steps/chunked.py): the offline loss in chunks of positions, for
  vocabularies whose [B, L, V] logits would not fit.


Splitting a step's rows over parallel CPU streams (kd_core/runtime/cpu_streams.py) happens
inside the steps: each shard's compiled call adds the previous shard's gradient, and the
update comes with the last shard, so the shards' heavy work runs concurrently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from kd_core.config import KDConfig
from kd_core.examples.aligned import one_to_one_map, student_only_mask
from kd_core.examples.batch import Batch, BatchSoftTargets, BatchSpans, BatchTeacher
from kd_core.losses.aligned import PIECE, align_loss_sums
from kd_core.losses.core import ce_loss_sum, combined_loss, log_softmax, topk_of
from kd_core.losses.divergences import DivergenceSpec, divergence_sum, offline_sums, online_sums
from kd_core.runtime.cpu_streams import StreamSet, row_slices
from kd_core.steps.chunked import (
    ChunkedCEStep,
    ChunkedStep,
    SplitModel,
    split_model,
    want_chunking,
)
from kd_core.steps.chunked_aligned import ChunkedAlignStep
from kd_core.steps.protocol import StepOutput, TrainStep, add_trees
from kd_core.vocab.plan import VocabAlignment, align_vocab_sizes

Reduce = Callable[[Any], Any]


class _CompiledStep:
    """A compiled value_and_grad over the model and optimiser state, run per row shard."""

    def __init__(
        self, model: nn.Module, optimizer: Any, cfg: KDConfig, reduce: Reduce, streams: StreamSet
    ) -> None:
        self.model, self.cfg, self.streams = model, cfg, streams
        self.spec = DivergenceSpec.of(cfg)
        value_and_grad = nn.value_and_grad(model, self._loss)
        state = [model.state, optimizer.state, mx.random.state]

        def step(inputs, targets, mask, extra, inv_count, prev_grad, do_update):
            (loss, (kd, ce)), grad = value_and_grad(model, inputs, targets, mask, extra, inv_count)
            if prev_grad is not None:
                grad = add_trees(grad, prev_grad)
            if do_update:
                # Each process's loss is divided by the global token count: summing the
                # gradients over processes gives exactly the single-process gradient.
                optimizer.update(model, reduce(grad))
                grad = None
            return loss, kd, ce, grad

        self._step = mx.compile(step, inputs=state, outputs=state)

    def _loss(self, model, inputs, targets, mask, extra, inv_count):
        kd, ce = self.loss_sums(model(inputs), targets, mask, extra)
        return combined_loss(kd, ce, self.cfg.alpha) * inv_count, (kd, ce)

    def loss_sums(self, logits, targets, mask, extra) -> tuple[mx.array, mx.array]:
        raise NotImplementedError

    def extra(self, batch: Batch) -> tuple[mx.array, ...]:
        """The loss's inputs beyond the student's own (soft targets or teacher logits)."""
        raise NotImplementedError

    def __call__(
        self, batch: Batch, inv_count: mx.array, prev_grad: Any, do_update: bool
    ) -> StepOutput:
        n = self.streams.n
        parts = [batch] if n == 1 else [batch.rows(s) for s in row_slices(len(batch.inputs), n)]
        loss = kd = ce = mx.array(0.0)
        grad = prev_grad
        for i, part in enumerate(parts):
            # Built lazily on stream i; the caller evaluates once, so the shards run at once.
            with self.streams.on(i):
                arrays = (mx.array(part.inputs), mx.array(part.targets), mx.array(part.mask))
                out = self._step(
                    *arrays, self.extra(part), inv_count, grad, do_update and i == len(parts) - 1
                )
                loss, kd, ce, grad = loss + out[0], kd + out[1], ce + out[2], out[3]
        return StepOutput(loss, kd, ce, grad)


class CEStep(_CompiledStep):
    """alpha = 0: plain CE fine-tuning on the response tokens, whatever the mode or the pair.
    Chosen once, in make_step: no teacher runs and no soft target is read."""

    def loss_sums(self, logits, targets, mask, extra):
        return mx.array(0.0), ce_loss_sum(logits, targets, mask=mask)[0]

    def extra(self, batch: Batch) -> tuple[mx.array, ...]:
        return ()


class OfflineStep(_CompiledStep):
    """KD against the cached top-k soft targets (+ tail), CE on the response tokens."""

    def loss_sums(self, logits, targets, mask, extra):
        ids, lps = extra
        cfg = self.cfg
        return offline_sums(logits, targets, mask, ids, lps, cfg.temperature, self.spec)

    def extra(self, batch: Batch) -> tuple[mx.array, ...]:
        soft = batch.soft
        assert isinstance(soft, BatchSoftTargets)
        return mx.array(soft.topk_ids), mx.array(soft.topk_logprobs)


class OnlineStep(_CompiledStep):
    """The teacher's full distribution at every position: its forward runs each step,
    outside the compiled student step (no gradient reaches it)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        cfg: KDConfig,
        reduce: Reduce,
        streams: StreamSet,
        teacher: nn.Module,
        alignment: VocabAlignment | None,
    ) -> None:
        self.teacher, self.alignment = teacher, alignment
        super().__init__(model, optimizer, cfg, reduce, streams)

    def loss_sums(self, logits, targets, mask, extra):
        cfg = self.cfg
        (t_logits,) = extra
        strategy = self.alignment.strategy if self.alignment else "truncate"
        t_al, s_al = align_vocab_sizes(t_logits, logits, strategy, self.alignment)
        if strategy == "truncate" and s_al.shape == logits.shape:
            # KD over the student's whole vocabulary, in its order: one fused pass.
            return online_sums(logits, t_al, targets, mask, cfg.temperature, self.spec)
        ce, _ = ce_loss_sum(logits, targets, mask=mask)
        kd, _ = divergence_sum(t_al, s_al, self.spec, cfg.temperature, mask)
        return kd, ce

    def extra(self, batch: Batch) -> tuple[mx.array, ...]:
        reads = batch.soft
        assert isinstance(reads, BatchTeacher)
        logits = self.teacher(mx.array(reads.inputs))
        idx = mx.array(reads.index)[..., None]
        return (mx.stop_gradient(mx.take_along_axis(logits, idx, axis=1)),)


class AlignStep(_CompiledStep):
    """Two tokenizers (vocab_strategy "align"): KD per aligned span at its anchor
    (kd_core/losses/aligned.py), CE on the student's own tokens. Offline the span targets come
    with the batch; online the teacher's forward runs each step (outside the compiled student
    step) and its distributions at the anchors are cut to the same top-k form."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        cfg: KDConfig,
        reduce: Reduce,
        streams: StreamSet,
        alignment: VocabAlignment,
        teacher: nn.Module | None = None,
    ) -> None:
        self.teacher, self.pieces = teacher, alignment.pieces
        self.t2s = mx.array(one_to_one_map(alignment).astype(np.int32))
        self.student_only = mx.array(student_only_mask(alignment))
        super().__init__(model, optimizer, cfg, reduce, streams)

    def loss_sums(self, logits, targets, mask, extra):
        cfg = self.cfg
        return align_loss_sums(logits, targets, mask, *extra, cfg.temperature, self.spec)

    def extra(self, batch: Batch) -> tuple[mx.array, ...]:
        spans = batch.soft
        assert isinstance(spans, BatchSpans)
        kind, span_len = mx.array(spans.span_kind), mx.array(spans.span_len)
        if self.teacher is None:
            targets = (
                mx.array(spans.teacher_span_lp),
                mx.array(spans.topk_ids),
                mx.array(spans.topk_logprobs),
                mx.array(spans.uld_logprobs),
            )
        else:
            targets = self._teacher_targets(spans)
        return (kind, span_len, *targets, self.student_only)

    def _teacher_targets(self, spans: BatchSpans) -> tuple[mx.array, ...]:
        reads = spans.teacher
        assert reads is not None and reads.targets is not None and spans.teacher_span is not None
        k = spans.uld_logprobs.shape[-1]
        log_p = log_softmax(self.teacher(mx.array(reads.inputs)), self.cfg.temperature)
        log_p = mx.stop_gradient(log_p)
        chosen = mx.take_along_axis(log_p, mx.array(reads.targets)[..., None], axis=-1)
        chosen = chosen[..., 0]
        cs = mx.cumsum(chosen, axis=1)
        span = mx.array(spans.teacher_span)
        first, last = span[..., 0], mx.maximum(span[..., 1] - 1, span[..., 0])
        span_lp = (
            mx.take_along_axis(cs, last, axis=1)
            - mx.take_along_axis(cs, first, axis=1)
            + mx.take_along_axis(chosen, first, axis=1)
        )
        at = mx.take_along_axis(log_p, mx.array(reads.index)[..., None], axis=1)
        ids_t, vals = topk_of(at, k)
        s = mx.take(self.t2s, ids_t)
        matched = s >= 0
        ids_s = mx.where(matched, s, 0)
        lp_m = mx.where(matched, vals, -mx.inf)
        rest = -mx.sort(-mx.where(matched, -mx.inf, vals), axis=-1)
        if self.pieces is not None:
            ids_s, lp_m, rest = self._piece_targets(spans, ids_t, vals, ids_s, lp_m, rest)
        return span_lp, ids_s, lp_m, rest

    def _piece_targets(self, spans: BatchSpans, ids_t, vals, ids_s, lp_m, rest):
        """The projected targets (kd_core/vocab/pieces.py) at the PIECE positions. They need
        the tokens' text, so the teacher's top-k there comes to the host: one sync per step,
        next to the teacher's forward that the step waits for anyway."""
        rows = np.argwhere(spans.span_kind >= PIECE)
        if len(rows) == 0:
            return ids_s, lp_m, rest
        b, j = rows[:, 0], rows[:, 1]
        picked = mx.array(b), mx.array(j)
        t_ids, t_lps = np.array(ids_t[picked]), np.array(vals[picked])
        read = spans.piece_prefix or [{}] * len(spans.span_kind)  # per row: position -> part read
        prefixes = [read[r].get(c, "") for r, c in rows]
        p_ids, p_lps = self.pieces.project(t_ids, t_lps, prefixes)
        ids_np, lp_np, rest_np = np.array(ids_s), np.array(lp_m), np.array(rest)
        ids_np[b, j], lp_np[b, j], rest_np[b, j] = p_ids, p_lps, -np.inf
        return mx.array(ids_np), mx.array(lp_np), mx.array(rest_np)


def make_step(
    model: nn.Module,
    optimizer: Any,
    cfg: KDConfig,
    streams: StreamSet,
    *,
    teacher: nn.Module | None = None,
    alignment: VocabAlignment | None = None,
    reduce: Reduce = lambda g: g,
    vocab: int = 0,
    warn: Callable[[str], None] = lambda _: None,
    on_policy: bool = False,
) -> TrainStep:
    """The step for this run, chosen once: plain CE when alpha = 0 (no teacher, no soft
    targets); else online when a teacher is given; chunked when the logits of a step would be
    large (offline only); the fused offline step otherwise; the align steps for a pair of
    tokenizers.

    on_policy: the step of the student's own samples — the online step (teacher forward on
    the student's text, full distribution; two tokenizers: the align step at the span anchors)
    under policy_config (alpha 1, the on-policy divergence)."""
    if on_policy:
        if teacher is None:
            raise ValueError("on_policy_ratio: on-policy steps need the teacher in memory")
        cfg = policy_config(cfg)
    ce_only = cfg.alpha == 0.0
    if ce_only:
        teacher = None  # plain CE reads no teacher, online or not
    chunk, split = _chunking(model, cfg, vocab, offline=teacher is None, warn=warn)
    if ce_only:
        if split is not None:
            return ChunkedCEStep(model, split, optimizer, cfg, chunk, reduce, streams)
        return CEStep(model, optimizer, cfg, reduce, streams)
    if alignment is not None and alignment.aligned:
        if split is not None:
            return ChunkedAlignStep(
                model, split, optimizer, cfg, chunk, reduce, streams, alignment=alignment
            )
        return AlignStep(model, optimizer, cfg, reduce, streams, alignment, teacher)
    if teacher is not None:
        return OnlineStep(model, optimizer, cfg, reduce, streams, teacher, alignment)
    if split is not None:
        return ChunkedStep(model, split, optimizer, cfg, chunk, reduce, streams)
    return OfflineStep(model, optimizer, cfg, reduce, streams)


def _chunking(
    model: nn.Module, cfg: KDConfig, vocab: int, offline: bool, warn: Callable[[str], None]
) -> tuple[int, SplitModel | None]:
    """Positions per chunk and the model's body/head split, when the step's logits would be
    large and the targets are offline (an online teacher's full logits are not chunked)."""
    chunk = want_chunking(cfg.loss_chunk, cfg.batch_size, cfg.max_seq_length, vocab)
    split = split_model(model) if chunk and offline else None
    if chunk and offline and split is None:
        warn("this model cannot be split into body and head; computing the loss unchunked")
    return chunk, split


def policy_config(cfg: KDConfig) -> KDConfig:
    """The configuration the on-policy steps train with: alpha 1, and the divergence named by
    `on_policy_divergence` unless it is "same"."""
    div = cfg.divergence if cfg.on_policy_divergence == "same" else cfg.on_policy_divergence
    return cfg.replace(alpha=1.0, divergence=div)
