"""Matmul rates: MLX vs numpy (BLAS preloaded or not) and the machine's fp32 sgemm peak.

Runs inside a worker process, because whether MLX got OpenBLAS is decided at its first import:
with `preload=True` kd_core is imported first (kd_core.runtime.blas loads OpenBLAS globally); with
`preload=False` the parent sets KD_NO_BLAS_PRELOAD=1 and MLX is imported directly, so it
keeps the reference BLAS its Linux wheel ships.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class Matmul:
    def __init__(self, preload: bool) -> None:
        if preload:
            import kd_core  # noqa: F401  (OpenBLAS before MLX)
            from kd_core.runtime import blas

            self.blas = blas.loaded_blas
        else:
            self.blas = None
        import mlx.core as mx

        self.mx = mx

    # Each sample is the mean of INNER back-to-back calls on the same inputs (each evaluated
    # on its own): a single cold call mostly measured BLAS threads waking up (MLX 17-20 ms vs
    # 8 ms warm at 1024^3 here), and numpy's single calls swung 10-35 ms.
    INNER = 10

    def _mlx(self, n: int) -> float:
        mx = self.mx
        a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
        mx.eval(a, b)
        t0 = time.perf_counter()
        for _ in range(self.INNER):
            mx.eval(a @ b)
        return (time.perf_counter() - t0) / self.INNER

    @classmethod
    def _numpy(cls, n: int) -> float:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        t0 = time.perf_counter()
        for _ in range(cls.INNER):
            a @ b
        return (time.perf_counter() - t0) / cls.INNER

    def compare(self, n: int = 1024, repeats: int = 5) -> dict[str, Any]:
        """MLX and numpy alternated (one warm-up each, not counted); per-call seconds."""
        self._mlx(n)
        self._numpy(n)
        t_mlx, t_np = [], []
        for _ in range(repeats):
            t_mlx.append(self._mlx(n))
            t_np.append(self._numpy(n))
        return {
            "n": n,
            "mlx_s": t_mlx,
            "numpy_s": t_np,
            "blas_preloaded": self.blas,
            "mlx": self.mx.__version__,
        }

    def sgemm_peak(self, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
        """numpy's fp32 n^3 matmul, best of `repeats`: the FLOP/s an MFU is measured against."""
        self._numpy(n)
        best = min(self._numpy(n) for _ in range(repeats))
        return {"n": n, "best_s": best, "flops_per_s": 2 * n**3 / best}
