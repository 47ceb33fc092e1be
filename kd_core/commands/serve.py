"""`kd serve-teacher`: the teacher behind HTTP for trainers on other machines
(kd_core/remote/server.py). The token: --token, else $KD_TEACHER_TOKEN (the variable the
trainer's side reads too), else none on loopback and a generated one on any other address.
A refused setting is one line and exit status 2; Ctrl-C stops the server (status 0)."""

from __future__ import annotations

import argparse
import sys

from kd_core.commands.exits import EXIT_BAD_INPUT
from kd_core.remote.connect import teacher_token
from kd_core.remote.server import ServeError, serve_teacher


def cmd_serve_teacher(args: argparse.Namespace) -> int:
    try:
        return serve_teacher(args.model, args.host, args.port, teacher_token(args.token), out=_say)
    except ServeError as e:
        print(f"kd serve-teacher: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def _say(line: str) -> None:
    print(line, flush=True)
