"""`kd distill`: one run in this process, or a data-parallel run under mlx.launch."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kd_core.commands.exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_TEACHER_GONE,
    INPUT_ERRORS,
    UsageError,
)
from kd_core.commands.launch import launch_distributed
from kd_core.commands.parser import spec_from_args
from kd_core.commands.printers import JsonLinesPrinter, TextPrinter, tee
from kd_core.commands.run_domains import spec_domains
from kd_core.config import RunSpec
from kd_core.config_file import save_toml
from kd_core.distiller import Domain, TrueKnowledgeDistiller
from kd_core.errors import TeacherGone, one_line
from kd_core.events import Event, RunFailed
from kd_core.remote.transport import TeacherUnavailable
from kd_core.run.control import RunControl
from kd_core.run.outputs import check_output_dir
from kd_core.run.record import RunLockedError, RunWriter, is_live, locked_message
from kd_core.teacher_address import without_token


def cmd_distill(args: argparse.Namespace) -> int:
    launching = bool(args.distributed or args.hostfile) and "MLX_RANK" not in os.environ
    try:
        spec = spec_from_args(args)
        domains = spec_domains(spec, args.allow_download)
        if args.distributed is not None and args.distributed < 1:
            raise UsageError(
                f"--distributed: expected a whole number from 1, got {args.distributed}"
            )
        record = None
        if not args.save_config and launching:
            _refuse_if_live(spec.config.output)  # rank 0 takes the folder once it is up
        elif not args.save_config and int(os.environ.get("MLX_RANK", "0")) == 0:
            record = open_record(spec, args)
    except Exception as e:
        if args.events == "jsonl":
            # A parent reading the event protocol gets the error as its terminal event too
            # (errors once the run has started are reported by the distiller itself).
            JsonLinesPrinter(sys.stdout)(RunFailed(one_line(e), detail=e.__class__.__name__))
        raise
    if launching:
        return launch_distributed(args)
    if args.save_config:
        save_toml(spec, args.save_config)
        print(f"wrote {args.save_config}")
        return 0
    return _recorded(args, spec, domains, record)


def _recorded(
    args: argparse.Namespace, spec: RunSpec, domains: dict[str, Domain], record: Any
) -> int:
    """The run, its exit status written to its record however it ends."""
    status = EXIT_FAILED
    try:
        status = _distill(args, spec, domains, record)
        return status
    except KeyboardInterrupt:
        status = 130
        raise
    except Exception as e:
        status = EXIT_BAD_INPUT if isinstance(e, INPUT_ERRORS) else EXIT_FAILED
        if isinstance(e, TeacherGone | TeacherUnavailable):
            status = EXIT_TEACHER_GONE
        raise
    finally:
        if record is not None:
            record.close(status)


def _distill(
    args: argparse.Namespace, spec: RunSpec, domains: dict[str, Domain], record: Any
) -> int:
    sink: Callable[[Event], None]
    if args.events == "jsonl":
        sink = JsonLinesPrinter(sys.stdout)
    else:
        sink = TextPrinter(sys.stdout, spec.config.steps_per_report, args.quiet)
    if record is not None:
        sink = tee(sink, record)
    control = RunControl()
    if args.control_stdin:
        control.follow_stdin()
    if int(os.environ.get("MLX_RANK", "0")) == 0:
        if args.control_file:
            control.follow_file(args.control_file)
        if record is not None:
            # Anyone may append pause/resume/stop; the file was emptied when the run took the
            # folder, so a word sent since (while MLX loaded) is this run's too.
            control.follow_file(record.control_path, skip_existing=False)

    def on_signal(signum: int, frame: Any) -> None:
        # First Ctrl-C: stop after this step with a checkpoint; the second one kills.
        if control.stop_requested:
            raise KeyboardInterrupt
        print("stopping after this step (checkpoint will be saved)…", file=sys.stderr)
        control.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    if "MLX_RANK" not in os.environ:
        # Under mlx.launch, SIGTERM is how the launcher ends the ranks when one has died:
        # keep its default (terminate). Graceful stops arrive through --control-file.
        signal.signal(signal.SIGTERM, on_signal)
    distiller = TrueKnowledgeDistiller(
        spec.teacher,
        spec.student,
        spec.config,
        on_event=sink,
        control=control,
        allow_download=args.allow_download,
        teacher_token=args.teacher_token,
        teacher_tokenizer=spec.teacher_tokenizer,
    )
    distiller.run(domains, resume=args.resume)
    return EXIT_STOPPED if control.stop_requested else 0


def _refuse_if_live(output: str) -> None:
    if is_live(output):
        raise RunLockedError(locked_message(Path(output).expanduser().absolute()))


def _absolute(path: str | None) -> str | None:
    """A path that names something here, made absolute (the resume command runs anywhere)."""
    if path and not Path(path).is_absolute() and Path(path).expanduser().exists():
        return str(Path(path).expanduser().absolute())
    return path


def open_record(spec: RunSpec, args: argparse.Namespace) -> Any:
    """Take the output folder (RunLockedError when a live run has it) and write the run's
    resolved settings beside its record, so its --resume command needs nothing else."""
    extra: list[str] = shlex.split(os.environ.get("KD_LAUNCH_ARGS", ""))
    if args.allow_download:
        extra.append("--allow-download")
    wanted = Path(spec.config.output).expanduser().absolute()
    existed = wanted.exists()
    output = check_output_dir(wanted)
    # The recorded command line never holds the token (run.json, the --resume command):
    # the resumed run reads it from --teacher-token again, or from KD_TEACHER_TOKEN.
    record = RunWriter.open(output, ["kd", *without_token(args.argv)], args.resume, extra)
    record.created_output = not existed  # a refused run then leaves no folder behind
    try:
        saved = replace(
            spec,
            teacher=_absolute(spec.teacher),
            student=_absolute(spec.student),
            domains=list(spec.domains),
            domain_files=[str(Path(f).expanduser().absolute()) for f in spec.domain_files],
            config=spec.config.replace(output=str(output)),
            data=_absolute(spec.data),
            teacher_tokenizer=_absolute(spec.teacher_tokenizer),
        )
        record.config_path.unlink(missing_ok=True)  # written anew, not edited in place
        save_toml(saved, record.config_path)
    except BaseException:
        record.close(EXIT_FAILED)
        raise
    return record
