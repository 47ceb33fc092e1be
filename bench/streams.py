"""Why kd splits a step over CPU streams, and why it widens MLX's breadth-first evaluation.

    .venv/bin/python bench/streams.py

Prints, for the bench's student (4 x 512, vocab 8192, LoRA rank 16 on every linear) and batch
(4 x 256): one LoRA value_and_grad on one stream with every BLAS thread, and on one stream per
core with one BLAS thread each, at MLX_BFS_MAX_WIDTH 20 (MLX's default) and 256 (kd's); plus
element-wise op times against numpy. Each width runs in its own process: MLX reads the variable
once. Not part of `run.py`'s keys; bench/README.md quotes its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure() -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import time  # noqa: I001  (kd_core must be imported before mlx)

    import kd_core  # noqa: F401  (OpenBLAS before MLX)
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from kd_core.runtime.blas import set_blas_threads
    from kd_core.runtime.cpu_streams import row_slices
    from kd_core.demo.tiny import LlamaSize, new_llama

    def best(f, n: int = 3) -> float:
        f()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    model, _ = new_llama(LlamaSize(512, 4, 1408, 8), 8192, 2)
    model.freeze()
    linear_to_lora_layers(model, 4, {"rank": 16, "scale": 2.0, "dropout": 0.0})
    x = mx.random.randint(0, 8192, (4, 256))
    mx.eval(x, model.parameters())
    vg = nn.value_and_grad(model, lambda m, t: nn.losses.cross_entropy(m(t), t).mean())
    cores = os.cpu_count() or 1
    streams = [mx.new_stream(mx.cpu) for _ in range(cores)]

    def step(n: int) -> None:
        outs = []
        for i, rows in enumerate(row_slices(4, n)):
            with mx.stream(streams[i]):
                outs.append(vg(model, x[rows]))
        mx.eval(outs)

    out = {"one_stream_s": best(lambda: step(1))}
    set_blas_threads(1)
    out["streams"] = min(cores, 4)
    out["per_core_streams_s"] = best(lambda: step(min(cores, 4)))
    v = mx.random.normal((8 * 2**20,))
    vn = np.array(v)
    mx.eval(v)
    out["mlx_exp_8M_s"] = best(lambda: mx.eval(mx.exp(v)))
    out["mlx_sigmoid_8M_s"] = best(lambda: mx.eval(mx.sigmoid(v)))
    out["mlx_add_8M_s"] = best(lambda: mx.eval(v + 1))
    out["numpy_exp_8M_s"] = best(lambda: np.exp(vn))
    return out


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return
    rows = {}
    for width in ("20", "256"):
        env = {**os.environ, "MLX_BFS_MAX_WIDTH": width}
        proc = subprocess.run(
            [sys.executable, __file__, "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows[width] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = rows["256"]["streams"]
    lines = [
        ("LoRA value_and_grad, student 4 x 512, batch 4 x 256", "BFS width 20", "256"),
        (
            f"one stream, {os.cpu_count()} BLAS threads",
            f"{rows['20']['one_stream_s']:.2f} s",
            f"{rows['256']['one_stream_s']:.2f} s",
        ),
        (
            f"{n} streams, 1 BLAS thread each",
            f"{rows['20']['per_core_streams_s']:.2f} s",
            f"{rows['256']['per_core_streams_s']:.2f} s",
        ),
    ]
    for a, b, c in lines:
        print(f"{a:<54}{b:>13}{c:>9}")
    r = rows["256"]
    print(
        f"8M float32: MLX exp {r['mlx_exp_8M_s'] * 1e3:.0f} ms, sigmoid "
        f"{r['mlx_sigmoid_8M_s'] * 1e3:.0f} ms, add {r['mlx_add_8M_s'] * 1e3:.0f} ms; "
        f"numpy exp {r['numpy_exp_8M_s'] * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
