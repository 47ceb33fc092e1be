"""Load a fast BLAS before MLX on Linux CPU.

MLX's Linux CPU wheel ships the reference BLAS: a 1024^3 fp32 matmul takes ~0.76 s
there versus ~0.02 s with OpenBLAS (measured, see docs/ARCHITECTURE.md). Loading OpenBLAS with
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

_handle: ctypes.CDLL | None = None


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
    # MLX evaluates a graph breadth-first up to this many independent branches (default 20),
    # then depth-first. A training step split over parallel CPU streams (cpu_streams.py) has
    # one branch per shard, each hundreds of ops long: at 20 MLX queued one shard's ops ahead
    # of the other's and the streams ran one after the other (`python bench/streams.py`: LoRA
    # value_and_grad, 4 x 512 student, batch 4 x 256, two streams 1.5-1.6 s at 20, 0.9 s at
    # 256; one stream 1.4 s either way). Read once by MLX, so it is set before MLX loads; not with a
    # CUDA build, where MLX's own scheduling is what was tuned.
    if not _cuda_build_installed():
        os.environ.setdefault("MLX_BFS_MAX_WIDTH", "256")
    override = os.environ.get("KD_BLAS_LIBRARY")
    for path in ((override,) if override else ()) + _CANDIDATES:
        try:
            handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        global _handle
        _handle = handle
        loaded_blas = path
        return path
    return None


def _cuda_build_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13"):
        try:
            version(name)
            return True
        except PackageNotFoundError:
            continue
    return False


def blas_threads() -> int | None:
    """Threads the preloaded OpenBLAS uses per call, or None if we cannot tell."""
    fn = getattr(_handle, "openblas_get_num_threads", None)
    return int(fn()) if fn is not None else None


def set_blas_threads(n: int) -> int | None:
    """Set the preloaded OpenBLAS's threads per call; return the previous count (or None when
    no OpenBLAS of ours is loaded, e.g. macOS/Accelerate or CUDA: nothing to do there)."""
    get = getattr(_handle, "openblas_get_num_threads", None)
    put = getattr(_handle, "openblas_set_num_threads", None)
    if get is None or put is None:
        return None
    previous = int(get())
    if previous != n:
        put(ctypes.c_int(n))
    return previous


preload_fast_blas()
