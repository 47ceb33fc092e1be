"""`python -m kd_core.remote --model PATH [--host H] [--port P] [--token T]`: the same as
`kd serve-teacher` (kd_core/commands/serve.py), kept for the command lines that name it."""

from __future__ import annotations

import sys

from kd_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve-teacher", *sys.argv[1:]]))
