"""Data-parallel distillation over mx.distributed (started by `mlx.launch`).

No home-made networking: every exchange is an mx.distributed collective. With one process
`mx.distributed.init()` is a group of size 1 and every helper here is a no-op.

- The student pass: each rank trains on its share of every global batch; gradients are
  summed (each rank's loss is already divided by the *global* token count of the step, so
  the sum is exactly the single-process gradient).
- The teacher pass: each rank runs the teacher on its share of the prompts; the results are
  all-gathered so every rank holds the complete, identical soft targets.
- One writer: rank 0 alone writes outputs and emits events; checkpoints it reads on resume
  are broadcast to the others, so no shared disk is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten


@dataclass
class World:
    group: Any
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: list[Any]) -> list[Any]:
        """This rank's share: items rank, rank + size, ... (round robin keeps shares even)."""
        return items[self.rank :: self.size]

    def all_sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group) if self.distributed else x

    def sum_tree(self, tree: Any) -> Any:
        if not self.distributed:
            return tree
        return tree_map(lambda g: mx.distributed.all_sum(g, group=self.group), tree)

    def barrier(self) -> None:
        if self.distributed:
            mx.eval(self.all_sum(mx.array(1.0)))

    def broadcast_tree(self, tree: Any) -> Any:
        """Rank 0's arrays on every rank (an all_sum where the others contribute zeros)."""
        if not self.distributed:
            return tree
        flat = tree_flatten(tree)
        out = []
        for k, v in flat:
            mine = v if self.is_main else mx.zeros_like(v)
            out.append((k, mx.distributed.all_sum(mine, group=self.group)))
        mx.eval([v for _, v in out])
        return tree_unflatten(out)

    def broadcast_int(self, value: int) -> int:
        if not self.distributed:
            return value
        x = mx.array(value if self.is_main else 0, dtype=mx.int64)
        return int(self.all_sum(x).item())

    def check_same(self, x: mx.array, what: str) -> None:
        """Raise if a scalar differs between ranks (weights drifting apart is a bug)."""
        if not self.distributed:
            return
        v = x.astype(mx.float32).reshape(1)
        total = mx.distributed.all_gather(v, group=self.group)
        vals = np.array(total)
        if not np.all(vals == vals[0]):
            raise RuntimeError(f"distributed: {what} differs between ranks ({vals.tolist()})")

    def gather_arrays(self, local: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (any first dimension; same trailing shape and dtype)."""
        if not self.distributed:
            return [local]
        n = mx.distributed.all_gather(mx.array([local.shape[0]], dtype=mx.int32), group=self.group)
        counts = [int(c) for c in np.array(n)]
        width = max(max(counts), 1)
        padded = np.zeros((width, *local.shape[1:]), dtype=local.dtype)
        padded[: local.shape[0]] = local
        # float16 and uint16 travel as float32 / int32: exact for these values.
        wire = padded.astype(np.float32) if padded.dtype.kind == "f" else padded.astype(np.int64)
        allg = np.array(mx.distributed.all_gather(mx.array(wire), group=self.group))
        parts = allg.reshape(self.size, width, *local.shape[1:])
        return [parts[r, : counts[r]].astype(local.dtype) for r in range(self.size)]


_WORLD: World | None = None


def world() -> World:
    """The process group (size 1 unless started by mlx.launch)."""
    global _WORLD
    if _WORLD is None:
        g = mx.distributed.init()
        _WORLD = World(g, g.rank(), g.size())
    return _WORLD


def interleave(parts: list[list[Any]]) -> list[Any]:
    """Undo `World.share`: parts[r] holds items r, r + size, ... ."""
    out: list[Any] = []
    longest = max((len(p) for p in parts), default=0)
    for i in range(longest):
        for p in parts:
            if i < len(p):
                out.append(p[i])
    return out
