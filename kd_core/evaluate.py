"""`kd eval`: how close is a student (base, or with an adapter) to the teacher?

On a domain's held-out prompts the teacher writes its responses (the same teacher pass and
cache as training), then at every response position we compare full distributions at T = 1:

    kl              mean over positions of KL(P_teacher || P_student)   (lower is better)
    top1_agreement  share of positions where both put the top token on the same id
    ce              mean -log P_student(teacher's token)                 (lower is better)

`--compare` trains, with the same steps and seed, a KD student (the run's alpha and T) and a
CE-only student (alpha 0), and reports the three figures for base, kd and ce_only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.atomic_io import atomic_write_json
from kd_core.config import KDConfig
from kd_core.data import forward_inputs
from kd_core.distiller import TrueKnowledgeDistiller, build_examples, check_output_dir
from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, DomainError, domain_from_file
from kd_core.losses import log_softmax
from kd_core.models import load_model, model_fingerprint, release, resolve_model
from kd_core.teacher import TeacherOutputs, TeacherPass, default_cache_dir
from kd_core.vocab import VocabAlignment, plan_vocab_alignment

EVAL_CHUNK = 8


@dataclass
class TeacherReference:
    """The teacher's responses to the held-out prompts and its log-probs there (float16)."""

    prompts: list[str]
    outputs: TeacherOutputs
    log_probs: list[np.ndarray]  # per example [R, V_t]
    tokenizer: Any
    vocab: int


def _response_logits(model: Any, seqs: list[np.ndarray], plens: list[int]) -> list[np.ndarray]:
    """Logits at the positions that predict each response token, per example (float32)."""
    out: list[np.ndarray] = []
    for start in range(0, len(seqs), EVAL_CHUNK):
        chunk = seqs[start : start + EVAL_CHUNK]
        logits = model(mx.array(forward_inputs(chunk))).astype(mx.float32)
        mx.eval(logits)
        arr = np.array(logits)
        for b, s in enumerate(chunk):
            p0 = plens[start + b] - 1
            out.append(arr[b, p0 : len(s) - 1])
    return out


def teacher_reference(
    teacher: str, prompts: list[str], cfg: KDConfig, domain: str, allow_download: bool = False
) -> TeacherReference:
    t_path = resolve_model(teacher, "teacher", allow_download)
    model, tok = load_model(t_path, "teacher")
    tpass = TeacherPass(default_cache_dir(), model_fingerprint(t_path), cfg)
    out = tpass.run(f"{domain}-heldout", prompts, False, lambda: (model, tok))
    logits = _response_logits(model, out.sequences, out.prompt_lens)
    vocab = int(logits[0].shape[-1]) if logits else 0
    lps = [np.array(log_softmax(mx.array(lg))).astype(np.float16) for lg in logits]
    release(model)
    return TeacherReference(prompts, out, lps, tok, vocab)


def measure(
    ref: TeacherReference,
    student: str,
    adapter: str | Path | None,
    cfg: KDConfig,
    allow_download: bool = False,
) -> dict[str, float]:
    """KL, top-1 agreement and CE of a student (optionally + adapter) on the teacher's text."""
    s_path = resolve_model(student, "student", allow_download)
    model, s_tok = load_model(s_path, "student", adapter_path=adapter)
    model.eval()
    s_vocab = int(model(mx.array([[0]])).shape[-1])
    al = plan_vocab_alignment(ref.tokenizer, s_tok, ref.vocab, s_vocab, cfg.vocab_strategy)
    examples, _ = build_examples(ref.prompts, ref.outputs, s_tok, al, online=True)
    seqs = [e.tokens for e in examples]
    logits = _response_logits(model, seqs, [e.prompt_len for e in examples])
    release(model)
    return compare_distributions(ref, examples, logits, al)


def compare_distributions(
    ref: TeacherReference, examples: list[Any], student_logits: list[np.ndarray], al: VocabAlignment
) -> dict[str, float]:
    kl_sum = agree = ce_sum = 0.0
    n = 0
    t_ids, s_ids = al.teacher_ids, al.student_ids
    for ex, t_lp, s_lg in zip(examples, ref.log_probs, student_logits, strict=True):
        valid = ex.valid if ex.valid is not None else np.ones(len(s_lg), bool)
        t = t_lp.astype(np.float64)[:, t_ids]
        s_full = s_lg.astype(np.float64)
        s_full = s_full - s_full.max(-1, keepdims=True)
        s_full = s_full - np.log(np.exp(s_full).sum(-1, keepdims=True))
        s = s_full[:, s_ids]
        if al.strategy == "project":  # compare over the shared tokens, renormalised
            t = t - np.log(np.exp(t).sum(-1, keepdims=True))
            s = s - np.log(np.exp(s).sum(-1, keepdims=True))
        p = np.exp(t)
        kl = (p * (t - s)).sum(-1)
        top_t, top_s = t.argmax(-1), s.argmax(-1)
        targets = ex.tokens[ex.prompt_len :]
        ce = -s_full[np.arange(len(targets)), targets]
        kl_sum += float(kl[valid].sum())
        agree += float((top_t == top_s)[valid].sum())
        ce_sum += float(ce[valid].sum())
        n += int(valid.sum())
    n = max(n, 1)
    return {"kl": kl_sum / n, "top1_agreement": agree / n, "ce": ce_sum / n, "positions": n}


def heldout_prompts(domain: str, domain_files: list[str] | None = None) -> list[str]:
    if domain in BUILTIN_DOMAINS:
        return DOMAIN_PROMPTS[domain]["heldout"]
    for f in domain_files or []:
        name, prompts = domain_from_file(f)
        if name == domain:
            return prompts  # a custom domain's file is its evaluation set
    raise DomainError(f"domain: unknown domain {domain!r} for eval")


def compare_kd_vs_ce(
    teacher: str | None,
    student: str | None,
    domain: str,
    cfg: KDConfig,
    output: Path,
    allow_download: bool = False,
    sink: Any = None,
) -> dict[str, Any]:
    """Train KD (cfg's alpha and T) and CE-only (alpha 0) students alike; evaluate all three."""
    prompts = DOMAIN_PROMPTS[domain]["examples"] if domain in BUILTIN_DOMAINS else None
    if prompts is None:
        raise DomainError(f"domain: --compare needs a built-in domain, not {domain!r}")
    runs = {
        "kd": cfg.replace(output=str(output / "kd")),
        "ce_only": cfg.replace(alpha=0.0, output=str(output / "ce_only")),
    }
    for run_cfg in runs.values():
        TrueKnowledgeDistiller(
            teacher, student, run_cfg, on_event=sink, allow_download=allow_download
        ).distill_domain(domain, prompts)
    ref = teacher_reference(
        teacher or "demo-teacher", heldout_prompts(domain), cfg, domain, allow_download
    )
    s = student or "demo-student"
    result: dict[str, Any] = {"base": measure(ref, s, None, cfg, allow_download)}
    for name, run_cfg in runs.items():
        result[name] = measure(ref, s, Path(run_cfg.output) / domain, cfg, allow_download)
    base, kd, ce = result["base"]["kl"], result["kd"]["kl"], result["ce_only"]["kl"]
    result["summary"] = {
        "domain": domain,
        "iters": cfg.num_iters,
        "seed": cfg.seed,
        "kd_vs_ce_kl_reduction": (ce - kd) / ce if ce > 0 else 0.0,
        "kd_gap_closed": (base - kd) / base if base > 0 else 0.0,
        "ce_gap_closed": (base - ce) / base if base > 0 else 0.0,
    }
    return result


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [f"{'student':<12} {'KL(T||S)':>10} {'top-1 agree':>12} {'CE':>8}"]
    for name, m in rows.items():
        lines.append(f"{name:<12} {m['kl']:>10.4f} {m['top1_agreement']:>12.3f} {m['ce']:>8.4f}")
    return "\n".join(lines)


def run_eval_command(args: argparse.Namespace) -> int:
    from kd_core.cli import TextPrinter, spec_from_args

    spec = spec_from_args(args)
    cfg = spec.config
    domains = spec.domains or ["thinking"]
    report: dict[str, Any] = {}
    for domain in domains:
        if args.compare:
            out = check_output_dir(Path(cfg.output) / "compare")
            sink = TextPrinter(sys.stderr, cfg.steps_per_report, quiet=True)
            res = compare_kd_vs_ce(
                spec.teacher, spec.student, domain, cfg, out, args.allow_download, sink
            )
            rows = {k: res[k] for k in ("base", "kd", "ce_only")}
            s = res["summary"]
            print(
                f"domain {domain} · {cfg.num_iters} steps · seed {cfg.seed} · held-out "
                f"prompts {len(heldout_prompts(domain))}"
            )
            print(format_table(rows))
            print(
                f"KD vs CE-only: {s['kd_vs_ce_kl_reduction']:.1%} lower KL · gap closed: "
                f"KD {s['kd_gap_closed']:.1%}, CE-only {s['ce_gap_closed']:.1%}"
            )
            report[domain] = res
        else:
            prompts = heldout_prompts(domain, spec.domain_files)
            ref = teacher_reference(
                spec.teacher or "demo-teacher", prompts, cfg, domain, args.allow_download
            )
            s = spec.student or "demo-student"
            rows = {"base": measure(ref, s, None, cfg, args.allow_download)}
            if args.adapter:
                rows["adapter"] = measure(ref, s, args.adapter, cfg, args.allow_download)
            print(f"domain {domain} · held-out prompts {len(prompts)}")
            print(format_table(rows))
            report[domain] = rows
    if args.json:
        data = report[domains[0]] if len(domains) == 1 else report
        atomic_write_json(Path(args.json), data)
        print(f"wrote {args.json}")
    return 0


__all__ = ["measure", "teacher_reference", "compare_kd_vs_ce", "run_eval_command", "format_table"]
