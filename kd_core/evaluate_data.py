"""`kd eval --data PATH` (issue 25): a student scored on the held-out rows of your own data.

The held-out rows are valid.jsonl's when the data has one, else the seeded 5% a run on the
same data holds out (kd_core/data_files/splits.py): never rows it trained on. Rows with
answers are scored on the given answers: the teacher reads each row in its template (no
sampling), the student in its own, and at every trained answer position (one vocabulary), or
at the one-to-one span anchors (two tokenizers, as `evaluate.compare_aligned`), T = 1:

    kl, top1_agreement  as kd eval on the teacher's own answers
    ce                  the student's mean -log P of its answer tokens
    bits_per_char       the student's NLL of its answer tokens (end of turn included), in bits,
                        per character of the answers: comparable across tokenizers

Prompts-only data is scored as a prompts domain is (the teacher answers the held-out prompts).
`compare_on_data` trains a KD and a CE-only student on the data's training rows with the same
steps and seed, and scores both and the base student.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kd_core.config import ConfigError, KDConfig
from kd_core.data_files.domain import DataDomain
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.evaluate import (
    compare_aligned,
    compare_distributions,
    kd_and_ce_runs,
    kd_vs_ce_summary,
    log_softmax_np,
    measure,
    method_config,
    response_logits,
    teacher_reference,
)
from kd_core.events import EvalResult, EventSink, PhaseStarted, null_sink
from kd_core.examples.batch import Example
from kd_core.examples.given import given_aligned_examples, given_examples, student_rendering
from kd_core.models.load import load_model, release, resolve_model, vocab_size
from kd_core.teacher.given import GivenRow, sequences_only, teacher_rows
from kd_core.vocab.plan import plan_vocab_alignment


@dataclass
class DataReference:
    """The teacher on the held-out rows' given answers: its log-probs from each row's first
    trained token on (float16), what `compare_distributions` / `compare_aligned` read."""

    domain: DataDomain
    given: list[GivenRow]
    log_probs: list[np.ndarray]  # per row [R, V_t]
    tokenizer: Any
    vocab: int


def data_reference(teacher: str, domain: DataDomain, cfg: KDConfig, allow: bool) -> DataReference:
    t_path = resolve_model(teacher, "teacher", allow)
    model, tok = load_model(t_path, "teacher")
    given, _ = teacher_rows(
        tok, domain.split.held_out, train_on=domain.settings.train_on,
        chat_template_kwargs=domain.settings.teacher_kwargs, max_seq_length=cfg.max_seq_length,
        source=str(domain.split.held_out_path),
    )  # fmt: skip
    logits = response_logits(model, [g.sequence for g in given], [g.prompt_len for g in given])
    lps = [log_softmax_np(lg).astype(np.float16) for lg in logits]
    vocab = vocab_size(model)
    release(model)
    return DataReference(domain, given, lps, tok, vocab)


def _student_examples(
    ref: DataReference, s_tok: Any, al: Any, max_len: int
) -> list[tuple[int, Example, int]]:
    """(row index, the student's example, its answers' characters) for each row that fits."""
    settings = ref.domain.settings
    out = []
    for i, g in enumerate(ref.given):
        s = student_rendering(s_tok, [g.row], settings.train_on, settings.student_kwargs, "")[0]
        seqs = sequences_only([g], ref.vocab)
        if al.strategy == "align":
            built = given_aligned_examples([g], [s], seqs, al, True, max_len, 1).examples
        else:
            built = given_examples([g], seqs, s_tok, al, True).examples
        if built:
            out.append((i, built[0], sum(sp.end - sp.start for sp in s.spans)))
    return out


def measure_data(
    ref: DataReference, student: str, adapter: str | Path | None, cfg: KDConfig, allow: bool
) -> dict[str, float]:
    """kl, top-1 agreement, CE and bits per character of a student (+ adapter) on the
    held-out given answers."""
    s_path = resolve_model(student, "student", allow)
    model, s_tok = load_model(s_path, "student", adapter_path=adapter)
    model.eval()
    al = plan_vocab_alignment(
        ref.tokenizer, s_tok, ref.vocab, vocab_size(model), cfg.vocab_strategy, cfg.align_targets
    )
    kept = _student_examples(ref, s_tok, al, cfg.max_seq_length)
    examples = [ex for _, ex, _ in kept]
    logits = response_logits(model, [e.tokens for e in examples], [e.prompt_len for e in examples])
    release(model)
    picked = _Picked([ref.log_probs[i] for i, _, _ in kept])
    compare = compare_aligned if al.strategy == "align" else compare_distributions
    figures: dict[str, float] = compare(picked, examples, logits, al)  # type: ignore[arg-type]
    nats = 0.0
    for ex, lg in zip(examples, logits, strict=True):
        targets = ex.tokens[ex.prompt_len :][: len(lg)]
        valid = ex.valid[: len(lg)] if ex.valid is not None else np.ones(len(lg), bool)
        full = log_softmax_np(lg).astype(np.float64)
        nats -= float(full[np.arange(len(targets)), targets][valid].sum())
    chars = sum(c for _, _, c in kept)
    figures["bits_per_char"] = nats / np.log(2.0) / max(chars, 1)
    figures["rows"] = len(kept)
    return figures


@dataclass
class _Picked:
    """The teacher log-probs of the rows scored, in the shape the comparisons read."""

    log_probs: list[np.ndarray]


def evaluate_data(
    teacher: str | None, student: str | None, domain: DataDomain, cfg: KDConfig,
    adapters: dict[str, str | Path | None], allow: bool = False,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """{name: figures} for the base student (adapter None) and each adapter named."""
    s = student or "demo-student"
    if domain.answers == "generate":  # prompts only: the teacher answers the held-out prompts
        prompts = [r.prompt for r in domain.split.held_out]  # type: ignore[union-attr]
        ref = teacher_reference(teacher or "demo-teacher", prompts, cfg, domain.name, allow)
        return {k: measure(ref, s, a, cfg, allow) for k, a in adapters.items()}
    dref = data_reference(teacher or "demo-teacher", domain, cfg, allow)
    if not dref.given:
        raise ConfigError(
            f"data: no held-out row of {domain.name!r} has an answer token within "
            f"max_seq_length {cfg.max_seq_length}"
        )
    return {k: measure_data(dref, s, a, cfg, allow) for k, a in adapters.items()}


def compare_on_data(
    teacher: str | None, student: str | None, domain: DataDomain, cfg: KDConfig, output: Path,
    allow: bool = False, sink: EventSink = null_sink,
) -> dict[str, Any]:  # fmt: skip
    """Train a KD student (cfg) and a CE-only student (alpha 0, no on-policy steps) on the
    data's training rows, same steps and seed; score both and the base on the held-out rows."""
    runs = kd_and_ce_runs(cfg, output)
    result = _train_and_score(teacher, student, domain, cfg, runs, allow, sink)
    held = {"data": domain.spec, "format": domain.format, "held_out": len(domain.split.held_out)}
    result["summary"] = {**held, **kd_vs_ce_summary(result, cfg)}
    return result


def _train_and_score(
    teacher: str | None, student: str | None, domain: DataDomain, cfg: KDConfig,
    runs: dict[str, KDConfig], allow: bool, sink: EventSink,
) -> dict[str, Any]:  # fmt: skip
    """Train each run on the data (same steps and seed), then score it and the base student
    on the held-out rows: {"base": ..., name: ...}."""
    if not domain.split.held_out:
        raise ConfigError(f"data: {domain.spec} holds out no rows (it needs at least 2 rows)")
    for run_cfg in runs.values():
        TrueKnowledgeDistiller(teacher, student, run_cfg, on_event=sink, allow_download=allow).run(
            {domain.name: domain}
        )
    sink(PhaseStarted("eval", domain.name, len(runs) + 1, "held-out rows"))
    adapters: dict[str, str | Path | None] = {"base": None}
    adapters |= {k: Path(c.output) / domain.name for k, c in runs.items()}
    result: dict[str, Any] = evaluate_data(teacher, student, domain, cfg, adapters, allow)
    for name in adapters:
        sink(EvalResult(domain.name, cfg.num_iters, result[name], student=name))
    return result


def methods_on_data(
    teacher: str | None, student: str | None, domain: DataDomain, cfg: KDConfig, output: Path,
    methods: list[str], allow: bool = False, sink: EventSink = null_sink,
) -> dict[str, Any]:  # fmt: skip
    """`kd eval --compare --methods ... --data`: each named method (evaluate.method_config)
    trained on the data with the same steps and seed, scored on the held-out rows."""
    if len(set(methods)) != len(methods) or "base" in methods:
        raise ConfigError(f"methods: name each method once (not 'base'), got {methods!r}")
    runs = {m: method_config(m, cfg).replace(output=str(output / m)) for m in methods}
    result = _train_and_score(teacher, student, domain, cfg, runs, allow, sink)
    keys = ("alpha", "divergence", "teacher_mode", "on_policy_ratio", "on_policy_divergence")
    result["summary"] = {
        "data": domain.spec,
        "held_out": len(domain.split.held_out),
        "iters": cfg.num_iters,
        "seed": cfg.seed,
        "methods": {m: {k: getattr(c, k) for k in keys} for m, c in runs.items()},
    }
    return result
