"""Use every CPU core for a training step: the batch's rows split over parallel MLX streams.

MLX's CPU backend runs each element-wise op (exp, silu, the soft-max of attention and of the
loss) on one thread; only its BLAS calls use several. Measured on the 2-core CI machine
(bench/README.md): exp over 8M floats 126 ms in MLX vs 19 ms in numpy, and a teacher forward
(8 x 768, batch 4 x 256) spends ~0.9 s of its 1.39 s outside the matmuls. Each MLX stream has
its own worker thread, so the same step split by rows over one stream per core, with the
BLAS threads shared out among the streams, keeps every core busy: that forward took 0.98 s.
It needs MLX to interleave the shards' ops: kd_core/runtime/blas.py widens MLX_BFS_MAX_WIDTH before
MLX loads.

The shards' gradients are chained (each compiled call adds the previous shard's gradient
after computing its own), so the heavy work of the shards does not depend on each other and
runs concurrently; the optimiser update comes with the last shard. On a GPU one stream is
best: `stream_count` returns 1 there unless asked otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import mlx.core as mx

from kd_core.runtime.blas import set_blas_threads


def stream_count(setting: int, rows: int, distributed: bool = False) -> int:
    """Parallel streams for a step of `rows` sequences. setting: 0 auto, N > 0 exactly N
    (never more than the rows). Auto is one per core on the CPU, and 1 on a GPU or when
    several processes share the machine (data parallel already splits the batch)."""
    if setting > 0:
        n = setting
    elif distributed or mx.default_device().type != mx.cpu:
        n = 1
    else:
        n = os.cpu_count() or 1
    return max(1, min(n, rows))


def row_slices(rows: int, parts: int) -> list[slice]:
    """`parts` contiguous, balanced, non-empty slices covering range(rows)."""
    parts = max(1, min(parts, rows))
    base, extra = divmod(rows, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


class StreamSet:
    """n CPU streams (or the default stream when n == 1), made once per trainer."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.streams: list[Any] = [mx.new_stream(mx.cpu) for _ in range(n)] if n > 1 else []

    def on(self, i: int) -> Any:
        """Context manager that sends the ops built inside it to stream i."""
        return mx.stream(self.streams[i % self.n]) if self.streams else nullcontext()

    @contextmanager
    def active(self) -> Iterator[None]:
        """While training on several streams, the cores are shared out among them: BLAS
        threads per call = cores // streams (1 on the 2-core machine this was measured on;
        more would oversubscribe the cores). Restored afterwards, so generation and
        evaluation get every core for their single stream."""
        per_stream = max(1, (os.cpu_count() or 1) // self.n)
        previous = set_blas_threads(per_stream) if self.n > 1 else None
        try:
            yield
        finally:
            if previous is not None:
                set_blas_threads(previous)
