"""Load a fast BLAS before MLX on Linux CPU.

MLX's Linux CPU wheel ships the reference BLAS: a 1024^3 fp32 matmul takes ~0.76 s
there versus ~0.02 s with OpenBLAS (measured, see DESIGN.md). Loading OpenBLAS with
RTLD_GLOBAL *before the first ``import mlx`` * makes MLX resolve its BLAS symbols to it;
no re-exec is needed. On macOS (Accelerate) and CUDA builds this is a no-op.

Import this module before anything imports ``mlx`` (``kd_core/__init__.py`` does).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# Debian/Ubuntu's libopenblas0-pthread, then generic names the loader can find.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "libopenblas.so.0",
)

loaded_blas: str | None = None
"""Path of the BLAS library loaded globally, or None (reference BLAS / not Linux)."""


def preload_fast_blas() -> str | None:
    """Load OpenBLAS globally if on Linux and MLX is not imported yet; return its path."""
    global loaded_blas
    if loaded_blas is not None:
        return loaded_blas
    if platform.system() != "Linux" or os.environ.get("KD_NO_BLAS_PRELOAD"):
        return None
    if "mlx.core" in sys.modules:
        # Too late: MLX already bound its BLAS symbols.
        return None
    # One BLAS thread per core; read by OpenBLAS when it initialises, so set it first.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    override = os.environ.get("KD_BLAS_LIBRARY")
    for path in ((override,) if override else ()) + _CANDIDATES:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded_blas = path
        return path
    return None


preload_fast_blas()
