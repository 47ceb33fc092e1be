"""Where the teacher's distribution can reach a student of another tokenizer, per domain.

    .venv/bin/python bench/align_anchors.py [--student demo-student-sp] [--domains thinking,...]

On the teacher's answers to each domain's held-out prompts (kd.toml's settings when run from
the repository root; the same texts `kd eval` scores), with the student's alignment:

- the teacher's probability mass on tokens the student also has (the part the exact KD term
  can compare), at one-to-one span anchors and at the anchors of longer spans;
- how much of that mass the teacher's top_k keeps;
- the share of spans, characters and student tokens in longer spans, where only the span's
  probability (a scalar) carries over.

Writes bench/results/align_anchors.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(student: str, domain: str) -> dict[str, Any]:
    from kd_core.config import KDConfig
    from kd_core.config_file import load_toml
    from kd_core.evaluate import heldout_prompts, teacher_reference
    from kd_core.examples.aligned import build_aligned_examples
    from kd_core.losses.aligned import MULTI, ONE_TO_ONE
    from kd_core.models.load import load_model, resolve_model, vocab_size
    from kd_core.vocab.plan import plan_vocab_alignment

    toml = ROOT / "kd.toml"
    cfg = load_toml(toml).config if toml.exists() else KDConfig()
    ref = teacher_reference("demo-teacher", heldout_prompts(domain), cfg, domain)
    model, s_tok = load_model(resolve_model(student, "student"), "student")
    al = plan_vocab_alignment(ref.tokenizer, s_tok, ref.vocab, vocab_size(model), "align")
    built = build_aligned_examples(
        ref.prompts, ref.outputs, ref.tokenizer, s_tok, al, True, cfg.max_seq_length, cfg.top_k
    )
    shared = np.zeros(ref.vocab, bool)
    shared[al.teacher_ids] = True
    mass: dict[int, list[np.ndarray]] = {ONE_TO_ONE: [], MULTI: []}
    kept: dict[int, list[np.ndarray]] = {ONE_TO_ONE: [], MULTI: []}
    tokens = multi_tokens = 0
    for example, lp in zip(built.examples, ref.log_probs, strict=True):
        ex = example.targets  # SpanTargets
        tokens += len(ex.span_kind)
        multi_tokens += int(ex.span_len[ex.span_kind == MULTI].sum())
        for kind in (ONE_TO_ONE, MULTI):
            t_pos = ex.teacher_span[np.flatnonzero(ex.span_kind == kind), 0]
            p = np.exp(lp[t_pos[t_pos < len(lp)]].astype(np.float64))
            top = np.argsort(-p, axis=-1)[:, : cfg.top_k]
            in_top = np.zeros_like(p, bool)
            np.put_along_axis(in_top, top, True, axis=-1)
            mass[kind].append((p * shared).sum(-1))
            kept[kind].append((p * (shared & in_top)).sum(-1))
    cat = lambda xs: float(np.concatenate(xs).mean()) if xs else 0.0  # noqa: E731
    summary = built.stats.summary()
    return {
        "domain": domain,
        "top_k": cfg.top_k,
        "shared_tokens": int(shared.sum()),
        "teacher_mass_on_shared_at_one_to_one": cat(mass[ONE_TO_ONE]),
        "teacher_mass_on_shared_at_longer_spans": cat(mass[MULTI]),
        "shared_mass_in_top_k_at_one_to_one": cat(kept[ONE_TO_ONE]),
        "spans_longer": 1.0 - summary["spans_one_to_one"],
        "chars_in_longer_spans": 1.0 - summary["response_chars_one_to_one"],
        "student_tokens_in_longer_spans": multi_tokens / max(tokens, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--student", default="demo-student-sp")
    p.add_argument("--domains", default="thinking,task,action,reflection,debug,memory")
    args = p.parse_args()
    rows = [measure(args.student, d) for d in args.domains.split(",")]
    for r in rows:
        print(
            f"{r['domain']:<11} shared mass 1:1 {r['teacher_mass_on_shared_at_one_to_one']:.3f}"
            f" (top-{r['top_k']} keeps {r['shared_mass_in_top_k_at_one_to_one']:.3f})"
            f" · longer spans {r['teacher_mass_on_shared_at_longer_spans']:.3f}"
            f" · student tokens in longer spans {r['student_tokens_in_longer_spans']:.2f}"
        )
    out = ROOT / "bench" / "results" / "align_anchors.json"
    out.write_text(json.dumps({"student": args.student, "domains": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
