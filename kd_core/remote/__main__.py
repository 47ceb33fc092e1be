"""`python -m kd_core.remote --model PATH [--host H] [--port P] [--token T]`: serve a teacher.

Every refusal is one line on stderr and exit status 2 (a bad port, a host this machine
cannot resolve, a port in use, a bad token, a model that cannot be found or loaded)."""

from __future__ import annotations

import argparse
import sys

import kd_core  # noqa: F401  (fast BLAS before MLX)
from kd_core.remote.server import DEFAULT_HOST, DEFAULT_PORT, ServeError, serve_teacher


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kd serve-teacher", description="Serve a teacher model's soft targets over HTTP."
    )
    p.add_argument("--model", required=True, help="local model folder, HF id or demo name")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default loopback)")
    p.add_argument("--port", default=str(DEFAULT_PORT), help="port (0: any free port)")
    p.add_argument("--token", default=None, help="bearer token (>= 16 characters)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return serve_teacher(args.model, args.host, args.port, args.token, out=_say)
    except ServeError as e:
        print(f"kd serve-teacher: {e}", file=sys.stderr, flush=True)
        return 2


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
