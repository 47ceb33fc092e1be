"""`kd eval` (held-out measurement, KD-vs-CE comparisons), `kd status` and `kd demo`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from kd_core.commands.exits import UsageError
from kd_core.commands.parser import spec_from_args
from kd_core.commands.printers import TextPrinter
from kd_core.commands.run_domains import data_domain
from kd_core.config import KDConfig, RunSpec
from kd_core.config_file import load_toml
from kd_core.data_files.domain import DataDomain
from kd_core.data_files.splits import whole_file
from kd_core.demo import SP_NAME, ensure_demo_pair, ensure_sp_student
from kd_core.evaluate import (
    compare_kd_vs_ce,
    compare_methods,
    heldout_prompts,
    measure,
    parse_methods,
    teacher_reference,
)
from kd_core.evaluate_data import compare_on_data, evaluate_data, methods_on_data
from kd_core.files.atomic import atomic_write_json
from kd_core.models.load import resolve_model
from kd_core.run.outputs import check_output_dir
from kd_core.run.status import find_damaged, find_states, status_lines
from kd_core.teacher_address import is_remote


def cmd_status(args: argparse.Namespace) -> int:
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
    spec = spec_from_args(args)
    if is_remote(spec.teacher):
        raise UsageError(
            "teacher: kd eval reads the teacher's whole distribution in this process; name the "
            "served model's folder or hub id, not the server's address"
        )
    cfg = spec.config
    domains = spec.domains or ([] if spec.data else ["thinking"])
    if args.methods is not None and not args.compare:
        raise UsageError("--methods: goes with --compare")
    # Given but empty ('' or ',,') is an error, not the default comparison.
    methods = parse_methods(args.methods) if args.methods is not None else None
    if args.json:  # before the work, not after it
        check_output_dir(Path(args.json).expanduser().parent, "json")
    report: dict[str, Any] = {}
    if spec.data:  # your own data: its held-out rows (and the named domains only if named)
        dom = data_domain(spec, args.allow_download)
        assert dom is not None
        report[dom.name] = _eval_data(spec, dom, args)
        domains = list(spec.domains)
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
        data = next(iter(report.values())) if len(report) == 1 else report
        atomic_write_json(Path(args.json), data)
        print(f"wrote {args.json}")
    return 0


def _eval_data(spec: RunSpec, dom: DataDomain, args: argparse.Namespace) -> dict[str, Any]:
    """`kd eval --data`: the base student (+ --adapter), or --compare's KD and CE-only.
    A single file scored without training is scored whole; a folder by its valid.jsonl."""
    cfg = spec.config
    scoring_only = args.methods is None and not args.compare
    if scoring_only and dom.source.valid is None and Path(dom.spec).is_file():
        dom = replace(dom, split=whole_file(dom.source))
    split = dom.split
    where = {"valid": "valid.jsonl", "seeded": "the seeded 5%", "file": "every row of the file"}
    where = where[split.held_out_from]
    head = f"data {dom.spec} · {dom.format} · held-out rows {len(split.held_out)} ({where})"
    if args.methods is not None:
        out = check_output_dir(Path(cfg.output) / "compare")
        sink = TextPrinter(sys.stderr, cfg.steps_per_report, quiet=True)
        methods = parse_methods(args.methods)
        res = methods_on_data(
            spec.teacher, spec.student, dom, cfg, out, methods, args.allow_download, sink
        )
        print(f"{head} · {cfg.num_iters} steps · seed {cfg.seed}")
        print(format_table({k: res[k] for k in ("base", *methods)}))
        return res
    if args.compare:
        out = check_output_dir(Path(cfg.output) / "compare")
        sink = TextPrinter(sys.stderr, cfg.steps_per_report, quiet=True)
        res = compare_on_data(spec.teacher, spec.student, dom, cfg, out, args.allow_download, sink)
        print(f"{head} · {cfg.num_iters} steps · seed {cfg.seed} · alpha {cfg.alpha:g}")
        _print_kd_vs_ce(res)
        return res
    adapters: dict[str, str | Path | None] = {"base": None}
    if args.adapter:
        _warn_other_base(Path(args.adapter), spec.student or "demo-student", args.allow_download)
        adapters["adapter"] = args.adapter
    rows = evaluate_data(spec.teacher, spec.student, dom, cfg, adapters, args.allow_download)
    print(head)
    print(format_table(rows))
    return rows


def _compare(
    spec: RunSpec, domain: str, args: argparse.Namespace, methods: list[str] | None
) -> dict[str, Any]:
    """`kd eval --compare` of one domain: KD vs CE-only, or the --methods named."""
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
    print(f"{head} · KD student alpha {cfg.alpha:g}, T {cfg.temperature:g} · {held}")
    _print_kd_vs_ce(res)
    return res


def _print_kd_vs_ce(res: dict[str, Any]) -> None:
    """The three students' table and how much closer KD came than CE-only."""
    s = res["summary"]
    print(format_table({k: res[k] for k in ("base", "kd", "ce_only")}))
    print(
        f"KD vs CE-only: {s['kd_vs_ce_kl_reduction']:.1%} lower KL · gap closed: "
        f"KD {s['kd_gap_closed']:.1%}, CE-only {s['ce_gap_closed']:.1%}"
    )
