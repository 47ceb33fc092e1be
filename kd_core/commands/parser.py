"""The `kd` argument parser and the settings it resolves to (defaults < kd.toml < flags).

Every KDConfig field is a flag of the same name in kebab-case (`--batch-size`); the seed's
short forms stay (`--iters`). A usage error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from kd_core.commands.exits import UsageError
from kd_core.config import (
    CONFIG_FIELDS,
    ConfigError,
    RunSpec,
    allowed_text,
    coerce_value,
    field_help,
)
from kd_core.config_file import load_toml
from kd_core.domains import BUILTIN_DOMAINS
from kd_core.remote.protocol import DEFAULT_HOST, DEFAULT_PORT
from kd_core.teacher_address import address_error

SHORT_FLAGS = {"num_iters": ["--iters"]}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


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
        help="teacher: local model folder, Hugging Face id in the local cache, demo-teacher "
        "(default), or a server's address http://host:port (kd serve-teacher; --teacher-api)",
    )
    p.add_argument(
        "--teacher-token",
        metavar="TOKEN",
        help="bearer token of a remote teacher (default: $KD_TEACHER_TOKEN); never written "
        "to kd.toml or the run folder",
    )
    p.add_argument(
        "--teacher-tokenizer",
        metavar="PATH",
        help="the served model's tokenizer (folder or hub id) for a remote teacher whose "
        "server does not send it (teacher_api mlx_lm)",
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
    p.add_argument(
        "--data",
        metavar="PATH",
        help="your own data as one more domain (named after it): a folder with train.jsonl "
        "(+ valid.jsonl, test.jsonl) or one .jsonl file of chat ('messages'), completions "
        "('prompt' + 'completion'), text ('text') or prompts rows, or hf:NAME[:split] from the "
        'local Hugging Face cache (the same as data = "..." in kd.toml)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="kd", description="True knowledge distillation for LLMs on MLX.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    _add_distill_parser(sub)
    _add_eval_parser(sub)
    m = sub.add_parser(
        "demo", help="build (if needed) and show the built-in demo pair and demo-student-sp"
    )
    m.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    _add_status_parser(sub)
    _add_serve_teacher_parser(sub)
    return parser


def _add_serve_teacher_parser(sub: Any) -> None:
    t = sub.add_parser(
        "serve-teacher",
        help="serve a teacher's soft targets over HTTP to trainers on other machines",
        description="Load a teacher once and serve /v1/score, /v1/generate, /v1/info and "
        "/v1/tokenizer (kd distill --teacher http://host:port). Loopback by default; any other "
        "address needs a token (--token, else $KD_TEACHER_TOKEN, else one is generated and "
        "printed), checked before any work.",
    )
    t.add_argument("--model", required=True, help="local model folder, HF id or demo name")
    t.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    t.add_argument("--port", default=str(DEFAULT_PORT), help="port (0: any free port)")
    t.add_argument("--token", default=None, help="bearer token (at least 16 characters)")


def _add_distill_parser(sub: Any) -> None:
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
    _add_process_flags(d)
    d.add_argument(
        "--save-config",
        metavar="PATH",
        help="write the resulting settings to this kd.toml and exit",
    )
    _add_config_flags(d)


def _add_process_flags(d: argparse.ArgumentParser) -> None:
    """How the run talks to whoever started it, and how many processes it runs in."""
    d.add_argument(
        "--events",
        choices=("text", "jsonl"),
        default="text",
        help="text for people; jsonl streams the event protocol on stdout",
    )
    d.add_argument(
        "--control-stdin",
        action="store_true",
        help="read pause/resume/stop lines on stdin (a parent process driving the run)",
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
    spec.config = spec.config.replace(**changes)
    _apply_run_flags(spec, args)
    return spec


def _apply_run_flags(spec: RunSpec, args: argparse.Namespace) -> None:
    """What to distil, from the flags over kd.toml's: models, data, domains."""
    if bad := address_error(getattr(args, "teacher", None)):
        raise ConfigError(bad)  # a server's address that names no host
    for name in ("teacher", "student", "data", "teacher_tokenizer"):
        if getattr(args, name, None):
            setattr(spec, name, getattr(args, name))
    if getattr(args, "domain_file", None):
        spec.domain_files = list(spec.domain_files) + list(args.domain_file)
    if getattr(args, "all", False):
        spec.domains = list(BUILTIN_DOMAINS)
    elif getattr(args, "domain", None):
        spec.domains = list(args.domain)
