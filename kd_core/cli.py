"""The headless command line: `kd distill`, `kd eval`, `kd demo` (and `python -m kd_core`).

Every KDConfig field is a flag of the same name in kebab-case (`--batch-size`); the seed's
short forms stay (`--iters`). Precedence: defaults < kd.toml (`--config`, or ./kd.toml) <
flags. Bad input exits with status 2 and one line naming the field; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

from kd_core.config import (
    CONFIG_FIELDS,
    ConfigError,
    KDConfig,
    RunSpec,
    allowed_text,
    coerce_value,
    field_help,
    load_toml,
    save_toml,
)
from kd_core.errors import one_line
from kd_core.events import CheckpointSaved, Event, Progress, RunFailed, Step, describe
from kd_core.runtime import blas as _blas  # noqa: F401  (fast BLAS before MLX)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_STOPPED = 3  # a stop (signal, control word, dashboard) ended the run early; --resume
COMMANDS = ("distill", "eval", "demo", "status")
SHORT_FLAGS = {"num_iters": ["--iters"]}


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class TextPrinter:
    """Prints engine events for a person at a terminal, in the words of `describe` (the
    dashboard's log uses the same). Steps every `report_every`; progress when it completes
    or (build) every 20 units; dimmed detail only when not quiet."""

    def __init__(self, stream: TextIO, report_every: int, quiet: bool = False) -> None:
        self.out = stream
        self.every = report_every
        self.quiet = quiet

    def __call__(self, e: Event) -> None:
        if isinstance(e, RunFailed):
            return  # main() prints the error once, on stderr
        if isinstance(e, Step) and (
            self.quiet or (e.step % self.every and e.step not in (1, e.total_steps))
        ):
            return
        if isinstance(e, Progress) and (
            self.quiet or (e.phase == "build" and e.done % 20 and e.done != e.total)
        ):
            return
        d = describe(e)
        if d is None:
            return
        prefix = {"warning": "warning: ", "error": "error: "}.get(d.level, "")
        indent = "  " if isinstance(e, Step | Progress | CheckpointSaved) else ""
        print(f"{indent}{prefix}{d.text}", file=self.out, flush=True)


class JsonLinesPrinter:
    """One JSON object per event on stdout: the protocol a parent process (the TUI) reads."""

    def __init__(self, stream: TextIO) -> None:
        self.out = stream

    def __call__(self, e: Event) -> None:
        self.out.write(e.to_json() + "\n")
        self.out.flush()


# ---- argument parsing ---------------------------------------------------------------------
def _add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyper-parameters (KDConfig; override kd.toml)")
    for name in CONFIG_FIELDS:
        flags = ["--" + name.replace("_", "-")] + SHORT_FLAGS.get(name, [])
        g.add_argument(
            *flags,
            dest=name,
            default=None,
            metavar="V",
            help=f"{field_help(name)} Allowed: {allowed_text(name)}.",
        )


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="PATH", help="kd.toml to read (default: ./kd.toml if present)"
    )
    p.add_argument(
        "--teacher",
        help="teacher: local model folder, Hugging Face id in the local "
        "cache, or demo-teacher (default)",
    )
    p.add_argument(
        "--student",
        help="student: local model folder, Hugging Face id in the local "
        "cache, demo-student (default) or demo-student-sp (its own SentencePiece tokenizer)",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="allow fetching a named hub model that is not in the local cache",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="kd", description="True knowledge distillation for LLMs on MLX.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    d = sub.add_parser(
        "distill",
        help="distil the teacher into LoRA adapters of the student",
        description="Distil the teacher into LoRA adapters of the student. `python -m kd_core` "
        "is this command, e.g. `python -m kd_core --domain thinking --temperature 2.0 --alpha "
        "0.7 --iters 200` or `python -m kd_core --all --teacher T --student S`. Other commands: "
        "`kd eval` (measure students against the teacher), `kd demo` (the built-in pair and "
        "demo-student-sp).",
    )
    _add_run_flags(d)
    d.add_argument(
        "--domain",
        action="append",
        default=None,
        help="domain to distil (repeatable); built in: thinking, task, action, "
        "reflection, debug, memory, or the name of a --domain-file",
    )
    d.add_argument("--all", action="store_true", help="distil every built-in domain")
    d.add_argument(
        "--domain-file",
        action="append",
        default=None,
        metavar="PATH",
        help="custom domain: one prompt per line, or JSON lines with 'prompt'; the "
        "domain is named after the file",
    )
    d.add_argument(
        "--resume", action="store_true", help="continue each domain from its latest checkpoint"
    )
    d.add_argument(
        "--events",
        choices=("text", "jsonl"),
        default="text",
        help="text for people; jsonl streams the event protocol on stdout",
    )
    d.add_argument(
        "--control-stdin",
        action="store_true",
        help="read pause/resume/stop lines on stdin (used by kd-tui)",
    )
    d.add_argument(
        "--control-file",
        metavar="PATH",
        help="read pause/resume/stop lines appended to this file (works under --distributed)",
    )
    d.add_argument("--quiet", action="store_true", help="no per-step lines")
    d.add_argument(
        "--distributed",
        type=int,
        default=None,
        metavar="N",
        help="data-parallel run in N local processes (mlx.launch, ring backend)",
    )
    d.add_argument(
        "--hostfile",
        metavar="PATH",
        help="data-parallel run across the hosts of an mlx.launch hostfile",
    )
    d.add_argument("--backend", default="ring", help="mlx.launch backend (default: ring)")
    d.add_argument(
        "--save-config",
        metavar="PATH",
        help="write the resulting settings to this kd.toml and exit",
    )
    _add_config_flags(d)

    _add_eval_parser(sub)
    m = sub.add_parser(
        "demo", help="build (if needed) and show the built-in demo pair and demo-student-sp"
    )
    m.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    _add_status_parser(sub)
    return parser


def _add_status_parser(sub: Any) -> None:
    st = sub.add_parser(
        "status",
        help="where the runs in an output folder stand (live, finished, crashed, ...)",
        description="Print the run in PATH (an output folder), or the runs in its sub-folders: "
        "state, pid, host, start time, last step and losses, and the --resume command of a "
        "run that crashed; a folder whose run.json is damaged is named with what is known. "
        "Exit status 0 when a run was found, 1 when none was.",
    )
    st.add_argument("path", nargs="?", help="output folder (default: kd.toml's output)")
    st.add_argument("--config", metavar="PATH", help="kd.toml to take the output from")


def _add_eval_parser(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="measure a student (or student + adapter) against the teacher on held-out prompts",
    )
    _add_run_flags(e)
    e.add_argument("--domain", action="append", default=None, help="domain (repeatable)")
    e.add_argument("--adapter", metavar="PATH", help="adapter folder to evaluate")
    e.add_argument(
        "--compare",
        action="store_true",
        help="train a KD student and a CE-only student with the same steps and "
        "seed, and compare both with the base student",
    )
    e.add_argument(
        "--methods",
        metavar="NAMES",
        help="with --compare: comma-separated methods to train and compare instead of kd and "
        "ce_only, e.g. ce_only,offline_fkl,online_fkl,jsd,on_policy_rkl (ce_only, kd, or fkl, "
        "rkl, jsd, skew_kl, tvd with an optional offline_, online_ or on_policy_ prefix)",
    )
    e.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    e.add_argument(
        "--domain-file",
        action="append",
        default=None,
        metavar="PATH",
        help="custom domain file (its prompts are the evaluation set)",
    )
    _add_config_flags(e)  # --iters, --output (<output>/compare/{kd,ce_only}) and the rest


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Defaults < kd.toml < flags, validated field by field."""
    spec = RunSpec()
    if args.config:
        spec = load_toml(args.config)
    elif Path("kd.toml").is_file():
        spec = load_toml("kd.toml")
    changes: dict[str, Any] = {}
    for name in CONFIG_FIELDS:
        raw = getattr(args, name, None)
        if raw is not None:
            changes[name] = coerce_value(name, raw)
    spec.config = KDConfig(**{**spec.config.to_dict(), **changes})
    if args.teacher:
        spec.teacher = args.teacher
    if args.student:
        spec.student = args.student
    if getattr(args, "domain_file", None):
        spec.domain_files = list(spec.domain_files) + list(args.domain_file)
    if getattr(args, "all", False):
        from kd_core.domains import BUILTIN_DOMAINS

        spec.domains = list(BUILTIN_DOMAINS)
    elif getattr(args, "domain", None):
        spec.domains = list(args.domain)
    return spec


def _input_errors() -> tuple[type[Exception], ...]:
    from kd_core.distiller import NoExamplesError
    from kd_core.domains import DomainError
    from kd_core.models.load import ModelError
    from kd_core.run.outputs import OutputError
    from kd_core.run.record import RunLockedError
    from kd_core.teacher.teacher_pass import CacheError
    from kd_core.train.checkpoints import ResumeError
    from kd_core.vocab.plan import VocabError

    return (
        ConfigError,
        DomainError,
        ModelError,
        VocabError,
        OutputError,
        CacheError,
        ResumeError,
        NoExamplesError,
        RunLockedError,
    )


def cmd_distill(args: argparse.Namespace) -> int:
    from kd_core.domains import resolve_domains

    try:
        spec = spec_from_args(args)
        domains = resolve_domains(spec.domains, spec.domain_files)
        if args.distributed is not None and args.distributed < 1:
            raise UsageError(
                f"--distributed: expected a whole number from 1, got {args.distributed}"
            )
        launching = bool(args.distributed or args.hostfile) and "MLX_RANK" not in os.environ
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
    status = EXIT_FAILED
    try:
        status = _distill(args, spec, domains, record)
        return status
    except KeyboardInterrupt:
        status = 130
        raise
    except Exception as e:
        status = EXIT_BAD_INPUT if isinstance(e, _input_errors()) else EXIT_FAILED
        raise
    finally:
        if record is not None:
            record.close(status)


def _distill(
    args: argparse.Namespace, spec: RunSpec, domains: dict[str, list[str]], record: Any
) -> int:
    from kd_core.distiller import TrueKnowledgeDistiller
    from kd_core.run.control import RunControl

    sink: Callable[[Event], None]
    if args.events == "jsonl":
        sink = JsonLinesPrinter(sys.stdout)
    else:
        sink = TextPrinter(sys.stdout, spec.config.steps_per_report, args.quiet)
    if record is not None:
        sink = _tee(sink, record)
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
    )
    distiller.run(domains, resume=args.resume)
    return EXIT_STOPPED if control.stop_requested else 0


def _tee(*sinks: Callable[[Event], None]) -> Callable[[Event], None]:
    def tee(e: Event) -> None:
        for sink in sinks:
            sink(e)

    return tee


def _refuse_if_live(output: str) -> None:
    from kd_core.run.record import RunLockedError, _locked_message, is_live

    if is_live(output):
        raise RunLockedError(_locked_message(Path(output).expanduser().absolute()))


def _absolute(path: str | None) -> str | None:
    """A path that names something here, made absolute (the resume command runs anywhere)."""
    if path and not Path(path).is_absolute() and Path(path).expanduser().exists():
        return str(Path(path).expanduser().absolute())
    return path


def open_record(spec: RunSpec, args: argparse.Namespace) -> Any:
    """Take the output folder (RunLockedError when a live run has it) and write the run's
    resolved settings beside its record, so its --resume command needs nothing else."""
    from kd_core.run.outputs import check_output_dir
    from kd_core.run.record import RunWriter

    extra: list[str] = shlex.split(os.environ.get("KD_LAUNCH_ARGS", ""))
    if args.allow_download:
        extra.append("--allow-download")
    wanted = Path(spec.config.output).expanduser().absolute()
    existed = wanted.exists()
    output = check_output_dir(wanted)
    record = RunWriter.open(output, ["kd", *args.argv], args.resume, extra)
    record.created_output = not existed  # a refused run then leaves no folder behind
    try:
        saved = RunSpec(
            _absolute(spec.teacher),
            _absolute(spec.student),
            list(spec.domains),
            [str(Path(f).expanduser().absolute()) for f in spec.domain_files],
            spec.config.replace(output=str(output)),
        )
        record.config_path.unlink(missing_ok=True)  # written anew, not edited in place
        save_toml(saved, record.config_path)
    except BaseException:
        record.close(EXIT_FAILED)
        raise
    return record


def launch_distributed(args: argparse.Namespace) -> int:
    """Re-run this command under mlx.launch; rank 0's output is the run's output.

    mlx.launch's own exit status does not reflect a failed rank, so we read the ranks'
    one-line errors as they pass through and decide the status from them.
    """
    if args.distributed is not None and args.distributed < 1:
        raise UsageError(f"--distributed: expected a whole number from 1, got {args.distributed}")
    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.exists():
        found = shutil.which("mlx.launch")
        if not found:
            raise UsageError("--distributed: mlx.launch not found (it comes with mlx)")
        launcher = Path(found)
    where = ["--hostfile", args.hostfile] if args.hostfile else ["-n", str(args.distributed)]
    inner: list[str] = []
    skip = False
    for a in args.argv:  # the same command, less the launch flags (and their values)
        if skip:
            skip = False
        elif a in ("--distributed", "--hostfile", "--backend"):
            skip = True
        elif not a.startswith(("--distributed=", "--hostfile=", "--backend=")):
            inner.append(a)
    cmd = [
        str(launcher),
        "--backend",
        args.backend,
        *where,
        "--",
        sys.executable,
        "-m",
        "kd_core",
        *inner,
    ]
    # Rank 0 records the run's --resume command: it must launch the same way again.
    launch = ["--backend", args.backend]
    if args.hostfile:
        launch += ["--hostfile", str(Path(args.hostfile).absolute())]
    else:
        launch += ["--distributed", str(args.distributed)]
    env = dict(os.environ, KD_LAUNCH_ARGS=shlex.join(launch))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    status = 0
    watchdog: threading.Timer | None = None
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("kd: error:"):
            status = max(status, EXIT_BAD_INPUT)
        elif line.startswith("kd: failed:") or "exited with code" in line:
            status = status or EXIT_FAILED
            if watchdog is None:
                # A rank is gone: whatever the others are blocked in, end them soon.
                watchdog = threading.Timer(LAUNCH_GRACE_S, _kill_group, args=(proc.pid,))
                watchdog.daemon = True
                watchdog.start()
    rc = proc.wait()
    if watchdog is not None:
        watchdog.cancel()
    return status or (EXIT_FAILED if rc else 0)


LAUNCH_GRACE_S = 20.0


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def cmd_status(args: argparse.Namespace) -> int:
    from kd_core.run.status import find_damaged, find_states, status_lines

    path = args.path
    if path is None:
        spec = load_toml(args.config) if args.config else None
        if spec is None and Path("kd.toml").is_file():
            spec = load_toml("kd.toml")
        path = (spec.config if spec else KDConfig()).output
    states = find_states(path)
    damaged = find_damaged(path)  # the same line `kd distill` refuses such a folder with
    if not states and not damaged:
        print(f"no runs in {path} (a run writes {Path(path) / '.kd-run'})")
        return 1
    for s in states:
        print("\n".join(status_lines(s)))
    for line in damaged:
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kd_core.demo import SP_NAME, ensure_demo_pair, ensure_sp_student

    say = lambda msg: print(msg, flush=True)  # noqa: E731
    pair = ensure_demo_pair(rebuild=args.rebuild, progress=say)
    print(f"teacher: {pair.teacher}\nstudent: {pair.student}")
    # The second built-in student: another tokenizer, for cross-tokenizer distillation.
    sp = ensure_sp_student(progress=say)
    print(
        f"student with its own SentencePiece tokenizer (--student {SP_NAME}): {sp}\n"
        f"  kd distill --student {SP_NAME}  distils across tokenizers (vocab_strategy)"
    )
    return 0


def format_table(rows: dict[str, dict[str, float]]) -> str:
    own = any("reverse_kl_on_student_samples" in m for m in rows.values())
    width = max([12, *(len(n) for n in rows)])
    head = f"{'student':<{width}} {'KL(T||S)':>10} {'top-1 agree':>12} {'CE':>8} {'bits/char':>9}"
    lines = [head + (f" {'KL(S||T) own':>13}" if own else "")]
    for name, m in rows.items():
        line = f"{name:<{width}} {m['kl']:>10.4f} {m['top1_agreement']:>12.3f} {m['ce']:>8.4f}"
        line += f" {m.get('bits_per_char', float('nan')):>9.4f}"
        if own:
            line += f" {m.get('reverse_kl_on_student_samples', float('nan')):>13.4f}"
        lines.append(line)
    return "\n".join(lines)


def _warn_other_base(adapter: Path, student: str, allow_download: bool) -> None:
    """An adapter trained on another base model loads (same shapes) and means nothing."""
    import json

    from kd_core.models.load import resolve_model

    try:
        base = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["model"]
        ours = resolve_model(student, "student", allow_download)
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(base, str) and Path(base).expanduser().resolve() != ours.resolve():
        print(
            f"kd: warning: {adapter} was trained on {base}, not on {ours}",
            file=sys.stderr,
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from kd_core.evaluate import heldout_prompts, measure, parse_methods, teacher_reference
    from kd_core.files.atomic import atomic_write_json
    from kd_core.run.outputs import check_output_dir

    spec = spec_from_args(args)
    cfg = spec.config
    domains = spec.domains or ["thinking"]
    if args.methods is not None and not args.compare:
        raise UsageError("--methods: goes with --compare")
    # Given but empty ('' or ',,') is an error, not the default comparison.
    methods = parse_methods(args.methods) if args.methods is not None else None
    if args.json:  # before the work, not after it
        check_output_dir(Path(args.json).expanduser().parent, "json")
    report: dict[str, Any] = {}
    for domain in domains:
        if args.compare:
            report[domain] = _compare(spec, domain, args, methods)
        else:
            prompts = heldout_prompts(domain, spec.domain_files)
            ref = teacher_reference(
                spec.teacher or "demo-teacher", prompts, cfg, domain, args.allow_download
            )
            student = spec.student or "demo-student"
            rows = {"base": measure(ref, student, None, cfg, args.allow_download)}
            if args.adapter:
                _warn_other_base(Path(args.adapter), student, args.allow_download)
                rows["adapter"] = measure(ref, student, args.adapter, cfg, args.allow_download)
            print(f"domain {domain} · held-out prompts {len(prompts)}")
            print(format_table(rows))
            report[domain] = rows
    if args.json:
        data = report[domains[0]] if len(domains) == 1 else report
        atomic_write_json(Path(args.json), data)
        print(f"wrote {args.json}")
    return 0


def _compare(
    spec: RunSpec, domain: str, args: argparse.Namespace, methods: list[str] | None
) -> dict[str, Any]:
    """`kd eval --compare` of one domain: KD vs CE-only, or the --methods named."""
    from kd_core.evaluate import compare_kd_vs_ce, compare_methods, heldout_prompts
    from kd_core.run.outputs import check_output_dir

    cfg = spec.config
    out = check_output_dir(Path(cfg.output) / "compare")
    sink = TextPrinter(sys.stderr, cfg.steps_per_report, quiet=True)
    head = f"domain {domain} · {cfg.num_iters} steps · seed {cfg.seed}"
    held = f"held-out prompts {len(heldout_prompts(domain))}"
    if methods is not None:
        res = compare_methods(
            spec.teacher, spec.student, domain, cfg, out, methods, args.allow_download, sink
        )
        print(f"{head} · T {cfg.temperature:g} · {held}")
        for m, c in res["summary"]["methods"].items():
            policy = c["on_policy_divergence"]
            on = f" ({policy})" if c["on_policy_ratio"] > 0 and policy != "same" else ""
            print(
                f"  {m}: alpha {c['alpha']:g} · {c['divergence']} · {c['teacher_mode']} · "
                f"on-policy {c['on_policy_ratio']:g}{on}"
            )
        print(format_table({k: res[k] for k in ("base", *methods)}))
        return res
    res = compare_kd_vs_ce(spec.teacher, spec.student, domain, cfg, out, args.allow_download, sink)
    s = res["summary"]
    print(f"{head} · KD student alpha {cfg.alpha:g}, T {cfg.temperature:g} · {held}")
    print(format_table({k: res[k] for k in ("base", "kd", "ce_only")}))
    print(
        f"KD vs CE-only: {s['kd_vs_ce_kl_reduction']:.1%} lower KL · gap closed: "
        f"KD {s['kd_gap_closed']:.1%}, CE-only {s['ce_gap_closed']:.1%}"
    )
    return res


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
        handler = {
            "distill": cmd_distill,
            "eval": cmd_eval,
            "demo": cmd_demo,
            "status": cmd_status,
        }[args.command]
        return handler(args)
    except UsageError as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        one = one_line(e)
        if isinstance(e, _input_errors()):
            print(f"kd: error: {one}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"kd: failed: {one}", file=sys.stderr)
        return EXIT_FAILED


def entry() -> None:
    """Console script `kd`."""
    raise SystemExit(main())
