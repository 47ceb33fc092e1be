"""The teacher on given text vs the teacher writing its own answers, for the same rows.

    .venv/bin/python bench/given_text.py [--rows 200] [--rounds 2]

200 `completions` rows from the demo corpus (bench/demo_data.py's generator: prompts of the
six built-in domains and the corpus's own answers) and the shipped demo teacher, at kd.toml's
teacher settings (max_tokens 128, top_k 32, T 1, teacher_temperature 0.7):

- given: `GivenPass.run` on the rows (each rendered by the teacher's template, one
  teacher-forced forward, top-k targets; kd_core/teacher/given.py), an empty cache each round;
- generation: `TeacherPass.run` on the rows' prompts (sampling every answer, then the same
  forward for the targets; kd_core/teacher/teacher_pass.py), an empty cache each round; and
  its sampling alone (`generate_responses`).

Rounds alternate the two; medians are reported, with the ratio given / generation (the issue's
goal: at most 0.2). Prints a table and writes bench/results/given_text.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, atomic_write_json, machine_facts  # noqa: E402


def rows(n: int) -> list[Any]:
    from kd_core.data_files import CompletionRow
    from kd_core.demo.corpus import DOMAIN_NAMES, load_domain_file, respond

    rng = random.Random(7)
    prompts = [(d, p) for d in DOMAIN_NAMES for p in load_domain_file(d)["train"]]
    rng.shuffle(prompts)
    picked = (prompts * (n // len(prompts) + 1))[:n]
    return [
        CompletionRow(i + 1, p, respond(d, p, random.Random(rng.getrandbits(64))))
        for i, (d, p) in enumerate(picked)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import kd_core  # noqa: F401  (fast BLAS before MLX)
    from kd_core.config import KDConfig
    from kd_core.generate import fitted_prompts, generate_responses
    from kd_core.models.identity import identify_model
    from kd_core.models.load import load_model, resolve_model
    from kd_core.teacher.given import GivenPass, teacher_rows
    from kd_core.teacher.teacher_pass import TeacherPass

    cfg = KDConfig(temperature=1.0, top_k=32, max_tokens=128, teacher_temperature=0.7)
    path = resolve_model("demo-teacher", "teacher")
    model, tok = load_model(path, "teacher")
    teacher = identify_model(path, "teacher")
    data = rows(args.rows)
    prompts = [r.prompt for r in data]
    times: dict[str, list[float]] = {"given": [], "generation": [], "sampling": []}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            given, _ = teacher_rows(
                tok, data, train_on="all_assistant", chat_template_kwargs=None,
                max_seq_length=cfg.max_seq_length, source="bench",
            )  # fmt: skip
            out = GivenPass(Path(tmp), teacher, cfg).run("bench", data, given, lambda: (model, tok))
            times["given"].append(time.perf_counter() - t0)
            tokens["given"] = out.response_tokens
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            gen = TeacherPass(Path(tmp), teacher, cfg).run(
                "bench", prompts, True, lambda: (model, tok)
            )
            times["generation"].append(time.perf_counter() - t0)
            tokens["generation"] = gen.response_tokens
        t0 = time.perf_counter()
        generate_responses(model, tok, [], cfg, fitted=fitted_prompts(tok, prompts, cfg))
        times["sampling"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "rows": args.rows,
        "rounds": args.rounds,
        "teacher": "demo-teacher",
        "seconds": med,
        "all_seconds": times,
        "answer_tokens": tokens,
        "ratio_given_to_generation": med["given"] / med["generation"],
        "ratio_given_to_sampling": med["given"] / med["sampling"],
        "machine": machine_facts(),
    }
    atomic_write_json(RESULTS / "given_text.json", result)
    print(f"{'pass':<12} {'seconds':>8} {'answer tokens':>14}")
    for k in ("given", "generation"):
        print(f"{k:<12} {med[k]:>8.2f} {tokens[k]:>14}")
    print(f"{'sampling':<12} {med['sampling']:>8.2f}")
    print(
        f"given / generation = {result['ratio_given_to_generation']:.3f} "
        f"(given / sampling alone = {result['ratio_given_to_sampling']:.3f})"
    )


if __name__ == "__main__":
    main()
