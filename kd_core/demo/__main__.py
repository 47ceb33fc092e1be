"""Regenerate the shipped demo pair: python -m kd_core.demo [OUT] (default kd_core/demo/pair).

Trains the default DemoRecipe from scratch (2140 s on this 2-core CPU, shared) and writes the
float16 pair with its SHA-256 manifest. `kd demo --rebuild` does the same into the cache and
says whether the bytes match the shipped manifest.
"""

from __future__ import annotations

from pathlib import Path

import kd_core  # noqa: F401  (fast BLAS before MLX)
from kd_core.demo.build import DemoRecipe, build_demo_pair, rebuild_main


def main() -> int:
    here = Path(__file__).resolve().parent
    return rebuild_main(
        lambda out, report: build_demo_pair(out, DemoRecipe(), report), here / "pair"
    )


if __name__ == "__main__":
    raise SystemExit(main())
