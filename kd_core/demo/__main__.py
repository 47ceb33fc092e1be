"""Regenerate the shipped demo pair: python -m kd_core.demo [OUT] (default kd_core/demo/pair).

Trains the default DemoRecipe from scratch (2140 s on this 2-core CPU, shared) and writes the
float16 pair with its SHA-256 manifest. `kd demo --rebuild` does the same into the cache and
says whether the bytes match the shipped manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import kd_core  # noqa: F401  (fast BLAS before MLX)
from kd_core.demo.build import DemoRecipe, build_demo_pair


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "pair"
    start = time.time()

    def report(what: str, done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"{what} {done}/{total} {time.time() - start:.0f} s", flush=True)

    build_demo_pair(out, DemoRecipe(), report)
    print(f"built {out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
