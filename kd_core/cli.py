"""The headless command line: `kd distill`, `kd eval`, `kd demo`, `kd status` (and
`python -m kd_core`, the seed's: `kd distill`), `kd serve-teacher` (a teacher for trainers
on other machines).

The commands live in kd_core/commands/ (parser.py: flags and settings, defaults < kd.toml <
flags; distill.py, launch.py, report.py). Bad input exits with status 2 and one line naming
the field; nothing is written. A stopped run exits 3 and resumes with --resume; a run whose
remote teacher went away exits 4 (checkpointed; --resume once the teacher is back).
"""

from __future__ import annotations

import sys

from kd_core.commands.distill import cmd_distill
from kd_core.commands.exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_TEACHER_GONE,
    INPUT_ERRORS,
    UsageError,
)
from kd_core.commands.parser import build_parser
from kd_core.commands.report import cmd_demo, cmd_eval, cmd_status
from kd_core.commands.serve import cmd_serve_teacher
from kd_core.errors import TeacherGone, one_line
from kd_core.remote.transport import TeacherUnavailable
from kd_core.runtime import blas as _blas  # noqa: F401, I001  (fast BLAS before MLX)

COMMANDS = ("distill", "eval", "demo", "status", "serve-teacher")
HANDLERS = {
    "distill": cmd_distill,
    "eval": cmd_eval,
    "demo": cmd_demo,
    "status": cmd_status,
    "serve-teacher": cmd_serve_teacher,
}

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_STOPPED", "EXIT_TEACHER_GONE", "entry", "main"]


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if default_command and (not argv or argv[0] not in COMMANDS):
        # `python -m kd_core --help` is the seed's command line: show distill's flags.
        argv = [default_command, *argv]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = argv
        if args.command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        return HANDLERS[args.command](args)
    except UsageError as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        one = one_line(e)
        if isinstance(e, INPUT_ERRORS):
            print(f"kd: error: {one}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(e, TeacherGone | TeacherUnavailable):
            print(f"kd: teacher lost: {one}", file=sys.stderr)
            return EXIT_TEACHER_GONE
        print(f"kd: failed: {one}", file=sys.stderr)
        return EXIT_FAILED


def entry() -> None:
    """Console script `kd`."""
    raise SystemExit(main())
