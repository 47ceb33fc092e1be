"""Chunked two-phase loss: never materialise the full [B, L, V] logits.

At Qwen's 151,936-token vocabulary the loss, not the model, is the cost: each [B, L, V] fp32
tensor of a 4 x 512 batch is 1.24 GB, and a naive KD step holds several. Measured here
(docs/ARCHITECTURE.md): wrapping chunks in mx.checkpoint inside one value_and_grad did not lower the
peak (the lazy graph still held it all). Two phases do:

1. body forward to the final hidden states h [B, L, D] (evaluated, no graph kept); then for
   each chunk of positions, the head + loss and the gradient of the loss w.r.t. that chunk of
   h, evaluated chunk by chunk (only [C, V] logits alive at a time);
2. one forward + backward through the body with dL/dh as the cotangent, and the optimiser.

The price is a second body forward. Only valid when logits == head(body(x)) and the head
has no trainable parameters: `split_model` checks both on the real model before use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from kd_core.config import KDConfig
from kd_core.examples.batch import Batch, BatchSoftTargets
from kd_core.losses.core import ce_loss_sum, combined_loss
from kd_core.losses.divergences import DivergenceSpec, offline_sums
from kd_core.runtime.cpu_streams import StreamSet, row_slices
from kd_core.steps.protocol import StepOutput, add_trees

AUTO_LOGITS_BYTES = 256 * 2**20  # chunk automatically when one [B, L, V] fp32 tensor is larger


@dataclass
class SplitModel:
    body: Callable[[mx.array], mx.array]  # inputs -> final hidden states
    head: Callable[[mx.array], mx.array]  # hidden states -> logits


def split_model(model: nn.Module) -> SplitModel | None:
    """Body and head of an mlx-lm causal LM, or None if this model cannot be split safely."""
    inner = getattr(model, "model", None)
    if inner is None or not callable(inner):
        return None
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None:
        head = lm_head
        head_params = dict(tree_flatten(lm_head.trainable_parameters()))
    elif hasattr(getattr(inner, "embed_tokens", None), "as_linear"):
        head = inner.embed_tokens.as_linear
        head_params = dict(tree_flatten(inner.embed_tokens.trainable_parameters()))
    else:
        return None
    if head_params:
        return None  # a trainable head would need its own gradient: use the fused path
    probe = mx.array([[1, 2, 3, 4]], dtype=mx.int32)
    try:
        ok = mx.allclose(head(inner(probe)), model(probe), atol=1e-4, rtol=1e-4).item()
    except Exception:
        return None
    return SplitModel(inner, head) if ok else None


def want_chunking(setting: int, batch_size: int, seq_len: int, vocab: int) -> int:
    """Positions per chunk, or 0 for the fused path. setting: 0 auto, -1 never, N > 0."""
    if setting < 0:
        return 0
    if setting > 0:
        return setting
    return 256 if batch_size * seq_len * vocab * 4 > AUTO_LOGITS_BYTES else 0


class ChunkedStep:
    """One micro-batch of the offline loss, computed in chunks of positions (a TrainStep)."""

    def __init__(
        self,
        model: nn.Module,
        split: SplitModel,
        optimizer: Any,
        cfg: KDConfig,
        chunk: int,
        reduce: Callable[[Any], Any] = lambda g: g,
        streams: StreamSet | None = None,
    ) -> None:
        self.model = model
        self.streams = streams or StreamSet(1)
        self.split = split
        self.optimizer = optimizer
        self.chunk = chunk
        self.cfg = cfg
        self._chunk_grad = mx.compile(mx.value_and_grad(self._chunk_loss, argnums=0))

        def surrogate(m, inputs, cotangent):
            # d/dθ sum(h(θ) * g) = J^T g: the body's backward pass with dL/dh as cotangent.
            return (split.body(inputs).astype(mx.float32) * cotangent).sum()

        vg = nn.value_and_grad(model, surrogate)
        state = [model.state, optimizer.state, mx.random.state]

        def body_backward(inputs, cotangent, prev_grad, do_update):
            _, grad = vg(model, inputs, cotangent)
            if prev_grad is not None:
                grad = add_trees(grad, prev_grad)
            if do_update:
                optimizer.update(model, reduce(grad))  # summed over processes when distributed
                grad = None
            return grad

        self._body_backward = mx.compile(body_backward, inputs=state, outputs=state)

    def _chunk_loss(self, h, inv, targets, mask, ids, lps):
        """The loss of a chunk of flattened positions (h [C, D], the rest [C, ...])."""
        cfg = self.cfg
        kd, ce = offline_sums(
            self.split.head(h), targets, mask, ids, lps, cfg.temperature, DivergenceSpec.of(cfg)
        )
        return combined_loss(kd, ce, cfg.alpha) * inv, (kd, ce)

    def position_arrays(self, batch: Batch, hs: list[mx.array]) -> list[mx.array]:
        """The per-position inputs of `_chunk_loss` after h and inv, each [B, L, ...] (hs: the
        shards' final hidden states, for a subclass that needs a first pass over them)."""
        soft = batch.soft
        assert isinstance(soft, BatchSoftTargets)
        return [
            mx.array(batch.targets),
            mx.array(batch.mask),
            mx.array(soft.topk_ids),
            mx.array(soft.topk_logprobs),
        ]

    def _hidden(self, inputs: mx.array, shards: list[slice]) -> list[mx.array]:
        hs = []
        for i, rows in enumerate(shards):
            with self.streams.on(i):
                hs.append(self.split.body(inputs[rows]))
        mx.eval(hs)
        return hs

    def __call__(self, batch: Batch, inv: mx.array, prev_grad: Any, do_update: bool) -> StepOutput:
        # Rows are split over the parallel streams (kd_core/runtime/cpu_streams.py); each phase
        # builds one piece per stream and evaluates them together, so the streams run at once.
        inputs = mx.array(batch.inputs)
        streams = self.streams
        shards = row_slices(inputs.shape[0], streams.n)
        hs = self._hidden(inputs, shards)
        arrays = self.position_arrays(batch, hs)
        pieces = []  # per shard: flattened h, then each position array flattened
        for h, rows in zip(hs, shards, strict=True):
            n = h.shape[0] * h.shape[1]
            flat = [a[rows].reshape(n, *a.shape[2:]) for a in arrays]
            pieces.append((h.reshape(n, h.shape[2]), *flat))
        loss = kd = ce = mx.array(0.0)
        grads: list[list[mx.array]] = [[] for _ in shards]
        longest = max(p[0].shape[0] for p in pieces)
        for s in range(0, longest, self.chunk):  # one chunk per stream alive at a time
            e = s + self.chunk
            wave = []
            for i, (hf, *rest) in enumerate(pieces):
                if s >= hf.shape[0]:
                    continue
                with streams.on(i):
                    (l_c, (kd_c, ce_c)), g = self._chunk_grad(hf[s:e], inv, *(a[s:e] for a in rest))
                    loss, kd, ce = loss + l_c, kd + kd_c, ce + ce_c
                grads[i].append(g)
                wave.append(g)
            mx.eval(wave, loss, kd, ce)
        del hs, pieces
        loss, kd = self.adjust(loss, kd, inv)
        grad = prev_grad
        for i, rows in enumerate(shards):
            x = inputs[rows]
            dh = mx.concatenate(grads[i], axis=0).reshape(*x.shape, -1).astype(mx.float32)
            grads[i] = []
            with streams.on(i):
                grad = self._body_backward(x, dh, grad, do_update and i == len(shards) - 1)
        return StepOutput(loss, kd, ce, grad)

    def adjust(self, loss: mx.array, kd: mx.array, inv: mx.array) -> tuple[mx.array, mx.array]:
        """The reported loss and KD when a chunk's loss is a gradient surrogate (align)."""
        return loss, kd


class ChunkedCEStep(ChunkedStep):
    """alpha = 0 at a large vocabulary: plain CE, in chunks of positions (see CEStep)."""

    def _chunk_loss(self, h, inv, targets, mask):
        ce, _ = ce_loss_sum(self.split.head(h), targets, mask=mask)
        kd = mx.array(0.0)
        return combined_loss(kd, ce, self.cfg.alpha) * inv, (kd, ce)

    def position_arrays(self, batch: Batch, hs: list[mx.array]) -> list[mx.array]:
        return [mx.array(batch.targets), mx.array(batch.mask)]
