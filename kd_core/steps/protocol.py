"""The training step's interface (kd_core/steps/fused.py has the implementations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import mlx.core as mx
from mlx.utils import tree_map

from kd_core.examples.batch import Batch
from kd_core.runtime.cpu_streams import StreamSet


@dataclass
class StepOutput:
    loss: mx.array  # this micro-batch's share of the step's combined loss
    kd: mx.array  # sums over its valid tokens (divide by the step's count to report)
    ce: mx.array
    grad: Any  # accumulated gradient; None once the optimiser has applied it


class TrainStep(Protocol):
    streams: StreamSet

    def __call__(
        self, batch: Batch, inv_count: mx.array, prev_grad: Any, do_update: bool
    ) -> StepOutput: ...


def add_trees(a: Any, b: Any) -> Any:
    return tree_map(lambda x, y: x + y, a, b)
