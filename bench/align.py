"""What cross-tokenizer alignment (vocab_strategy "align") costs, on the built-in demo pairs.

    .venv/bin/python bench/align.py [--student demo-student-sp] [--domain thinking]
        [--steps 20] [--iters 600]

1. The demo teacher answers the domain's training prompts (the teacher pass and its cache,
   at kd.toml's settings when run from the repository root).
2. The alignment work: building the student's examples with align (its text in the student's
   own tokens, spans, per-span targets) against project (ids mapped one by one), median of 5.
   It happens once per run, so per training step it costs build time / iterations.
3. A training step of each (same student, same batch rows, LoRA from kd.toml), alternated.

    align_overhead_ratio = (align build - project build) / iters / align step
    align_step_ratio     = align step / project step   (the span loss's own cost)

Prints the figures and writes bench/results/align.json (used by `bench/run.py --only align`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_time(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(student: str, domain: str, steps: int, iters: int) -> dict[str, Any]:
    import mlx.core as mx
    import mlx.optimizers as optim

    from kd_core.config import KDConfig
    from kd_core.config_file import load_toml
    from kd_core.domains import DOMAIN_PROMPTS
    from kd_core.examples.aligned import build_aligned_examples
    from kd_core.examples.batch import BatchPlan, make_batch
    from kd_core.examples.same_vocab import build_examples
    from kd_core.files.user_dirs import default_cache_dir
    from kd_core.models.identity import identify_model
    from kd_core.models.load import load_model, resolve_model, vocab_size
    from kd_core.runtime.cpu_streams import StreamSet
    from kd_core.steps.fused import make_step
    from kd_core.teacher.teacher_pass import TeacherPass
    from kd_core.train.trainer import apply_lora
    from kd_core.vocab.plan import plan_vocab_alignment

    toml = ROOT / "kd.toml"
    cfg = load_toml(toml).config if toml.exists() else KDConfig()
    prompts = DOMAIN_PROMPTS[domain]["examples"]
    t_path = resolve_model("demo-teacher", "teacher")
    t_model, t_tok = load_model(t_path, "teacher")
    tpass = TeacherPass(default_cache_dir(), identify_model(t_path, "teacher"), cfg)
    outputs = tpass.run(domain, prompts, True, lambda: (t_model, t_tok))
    s_path = resolve_model(student, "student")
    model, s_tok = load_model(s_path, "student")
    sizes = vocab_size(t_model), vocab_size(model)
    al = plan_vocab_alignment(t_tok, s_tok, *sizes, "align")
    pj = plan_vocab_alignment(t_tok, s_tok, *sizes, "project")
    seq = cfg.max_seq_length

    def build_align():
        return build_aligned_examples(prompts, outputs, t_tok, s_tok, al, False, seq, cfg.top_k)

    t_align = _median_time(build_align, 5)
    t_project = _median_time(lambda: build_examples(prompts, outputs, s_tok, pj, False, seq), 5)
    aligned = build_align()
    projected = build_examples(prompts, outputs, s_tok, pj, False, seq).examples
    apply_lora(model, cfg)
    opt = optim.Adam(learning_rate=1e-5)
    streams = StreamSet(1)
    step_a = make_step(model, opt, cfg, streams, alignment=al, vocab=sizes[1])
    step_p = make_step(model, opt, cfg, streams, alignment=pj, vocab=sizes[1])
    plan = BatchPlan(min(len(aligned.examples), len(projected)), cfg.batch_size, cfg.seed)

    shapes: dict[str, list[int]] = {"align": [], "project": []}

    def one(step: Any, examples: list[Any], s: int, tag: str) -> float:
        batch = make_batch([examples[i] for i in plan.indices(s)], seq)
        shapes[tag].append(int(batch.inputs.size))
        t0 = time.perf_counter()
        out = step(batch, mx.array(1.0 / max(batch.tokens, 1)), None, True)
        mx.eval(out.loss, model.parameters(), opt.state)
        return time.perf_counter() - t0

    one(step_a, aligned.examples, 1, "align"), one(step_p, projected, 1, "project")  # compile
    ta, tp = [], []
    for s in range(2, steps + 2):  # alternated: outside load lands on both alike
        ta.append(one(step_a, aligned.examples, s, "align"))
        tp.append(one(step_p, projected, s, "project"))
    med_a, med_p = statistics.median(ta), statistics.median(tp)
    # The student's own tokens of a text outnumber the teacher's when its vocabulary is
    # smaller: per padded position is the fair comparison of the two losses.
    pos_a, pos_p = statistics.mean(shapes["align"]), statistics.mean(shapes["project"])
    return {
        "student": student,
        "domain": domain,
        "examples": len(aligned.examples),
        "vocab_alignment": aligned.stats.summary(),
        "align_build_s": t_align,
        "project_build_s": t_project,
        "iters": iters,
        "align_step_median_s": med_a,
        "project_step_median_s": med_p,
        "align_overhead_ratio": max(0.0, t_align - t_project) / iters / med_a,
        "align_step_ratio": med_a / med_p,
        "batch_positions_align_vs_project": [pos_a, pos_p],
        "align_step_ratio_per_position": (med_a / pos_a) / (med_p / pos_p),
        "batch_size": cfg.batch_size,
    }


FIXTURES = ROOT.parent / "shared" / "fixtures" / "tokenizers"


def fixture_coverage() -> dict[str, Any] | None:
    """align_sequences between the two real fixture tokenizers (GPT-2 byte-level BPE as the
    teacher, Llama 2 SentencePiece as the student) over every built-in prompt and a few
    chat-like texts: the coverage a real cross-family pair gets (None without the fixtures)."""
    import gzip

    from tokenizers import Tokenizer

    from kd_core.domains import DOMAIN_PROMPTS
    from kd_core.vocab.spans import align_sequences

    if not FIXTURES.is_dir():
        return None

    def load(name: str) -> Any:
        with gzip.open(FIXTURES / name / "tokenizer.json.gz", "rt", encoding="utf-8") as fh:
            return Tokenizer.from_str(fh.read())

    gpt2, llama = load("gpt-2"), load("llama-spm")
    texts = [t for d in DOMAIN_PROMPTS.values() for part in d.values() for t in part]
    texts += [
        "Sure! Here's a plan:\n\n1. Back up the photos.\n2. Check the café's Wi-Fi 😀.",
        "```python\ndef f(x):\n    return x ** 2  # square\n```",
        "Größe: 12 cm — naïve résumé, 日本語のテキスト, emoji 🚀🔥.",
    ]
    chars = covered = one_chars = spans = ones = 0
    for text in texts:
        al = align_sequences(gpt2, llama, text)
        chars += len(text)
        covered += sum(sp.end - sp.start for sp in al.spans)
        one_chars += sum(sp.end - sp.start for sp in al.spans if sp.one_to_one)
        spans += len(al.spans)
        ones += sum(sp.one_to_one for sp in al.spans)
    return {
        "pair": "gpt-2 (teacher) -> llama-2 sentencepiece (student)",
        "texts": len(texts),
        "response_chars_covered": covered / chars,
        "spans_one_to_one": ones / spans,
        "response_chars_one_to_one": one_chars / chars,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--student", default="demo-student-sp")
    p.add_argument("--domain", default="thinking")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--iters", type=int, default=600, help="steps a run amortises its build over")
    args = p.parse_args()
    result = measure(args.student, args.domain, args.steps, args.iters)
    result["fixture_pair"] = fixture_coverage()
    out = ROOT / "bench" / "results" / "align.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
