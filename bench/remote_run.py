"""Whole `kd` runs with the teacher behind `kd serve-teacher` on loopback against the same runs
with the teacher in-process (issue 26): what a user sees.

    .venv/bin/python bench/remote_run.py [--rounds 3] [--steps 12] [--prompts 24]
        [--max-tokens 48] [--domain task]

The built-in demo pair (demo-teacher -> demo-student), served by `python -m kd_core
serve-teacher` in a process of its own. Per round, alternating which goes first, each with a
fresh teacher cache:

1. the teacher pass (offline mode): seconds from the teacher phase's start to its cache
   file (generation + soft targets; remote: one /v1/generate);
2. online steps: the median step time of `--steps` steps of `teacher_mode = "online"` (the
   in-process step runs the teacher's forward over the full vocabulary; the remote one asks
   the server for the batch's top-k targets, then trains as offline);
3. offline steps, the same way (no teacher in them either way: a control, expected 1.0).

Ratios are remote / in-process of the medians over the rounds. Prints a table and writes
bench/results/remote_run.json.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kd_core  # noqa: E402, F401, I001  (fast BLAS before MLX)
from bench.common import RESULTS, atomic_write_json, machine_facts  # noqa: E402
from kd_core.config import KDConfig  # noqa: E402
from kd_core.distiller import TrueKnowledgeDistiller  # noqa: E402
from kd_core.domains import DOMAIN_PROMPTS  # noqa: E402
from kd_core.events import CacheUsed, PhaseStarted, Step  # noqa: E402


def start_server(cache: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kd_core", "serve-teacher", "--model", "demo-teacher"]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "KD_CACHE_DIR": str(cache)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    first = lines.get(timeout=600)
    return proc, first.rsplit(" on ", 1)[1].strip()


def one_run(teacher: str, args: Any, root: Path, mode: str, steps: int) -> dict[str, Any]:
    """Seconds of the teacher pass and the step times of one run, fresh cache."""
    cfg = KDConfig(
        teacher_mode=mode,
        num_iters=steps,
        max_tokens=args.max_tokens,
        batch_size=4,
        max_seq_length=256,
        steps_per_save=10**6,
        output=str(root / "out"),
    )
    marks: dict[str, float] = {}
    step_times: list[float] = []

    def sink(e: Any) -> None:
        if isinstance(e, PhaseStarted) and e.phase == "teacher":
            marks["teacher"] = time.perf_counter()
        elif isinstance(e, CacheUsed):
            marks["cached"] = time.perf_counter()
        elif isinstance(e, Step):
            step_times.append(e.tokens / e.tokens_per_second if e.tokens_per_second else 0.0)

    prompts = DOMAIN_PROMPTS[args.domain]["examples"][: args.prompts]
    TrueKnowledgeDistiller(
        teacher, "demo-student", cfg, on_event=sink, cache_dir=root / "cache"
    ).distill_domain(args.domain, prompts)
    # The first step compiles: left out of the step medians.
    return {
        "teacher_pass_s": marks["cached"] - marks["teacher"],
        "step_s": statistics.median(step_times[1:]) if len(step_times) > 1 else step_times[0],
    }


def measure(args: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kd-remote-run-"))
    os.environ["KD_CACHE_DIR"] = str(work / "kd-cache")
    proc, url = start_server(work / "server-cache")
    runs: dict[str, dict[str, list[float]]] = {}
    try:
        for r in range(args.rounds):
            order = [("remote", url), ("local", "demo-teacher")]
            if r % 2:
                order.reverse()
            for name, teacher in order:
                for mode, steps in (("offline", args.steps), ("online", args.steps)):
                    root = work / f"{name}-{mode}-{r}"
                    got = one_run(teacher, args, root, mode, steps)
                    slot = runs.setdefault(f"{name}-{mode}", {})
                    for key, value in got.items():
                        slot.setdefault(key, []).append(value)
    finally:
        proc.kill()
        proc.wait()

    def med(run: str, key: str) -> float:
        return statistics.median(runs[run][key])

    result = {
        "pair": "demo-teacher -> demo-student",
        "domain": args.domain,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "steps": args.steps,
        "rounds": args.rounds,
        "raw": runs,
        "teacher_pass": {
            "in_process_s": round(med("local-offline", "teacher_pass_s"), 3),
            "remote_s": round(med("remote-offline", "teacher_pass_s"), 3),
        },
        "online_step": {
            "in_process_s": round(med("local-online", "step_s"), 4),
            "remote_s": round(med("remote-online", "step_s"), 4),
        },
        "offline_step": {
            "in_process_s": round(med("local-offline", "step_s"), 4),
            "remote_s": round(med("remote-offline", "step_s"), 4),
        },
    }
    for key in ("teacher_pass", "online_step", "offline_step"):
        r = result[key]
        r["ratio"] = round(r["remote_s"] / r["in_process_s"], 3)
    facts = machine_facts()
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = facts
    return result


def table(r: dict[str, Any]) -> str:
    lines = [
        f"remote (kd serve-teacher, loopback) vs in-process teacher: {r['pair']}, "
        f"{r['prompts']} prompts x {r['max_tokens']} tokens, {r['rounds']} rounds",
        f"{'':<22}{'in-process':>12}{'remote':>12}{'ratio':>8}",
    ]
    for key, label in (
        ("teacher_pass", "teacher pass (s)"),
        ("online_step", "online step (s)"),
        ("offline_step", "offline step (s)"),
    ):
        x = r[key]
        lines.append(f"{label:<22}{x['in_process_s']:>12}{x['remote_s']:>12}{x['ratio']:>8}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--domain", default="task")
    args = p.parse_args()
    result = measure(args)
    atomic_write_json(RESULTS / "remote_run.json", result)
    print(table(result))


if __name__ == "__main__":
    main()
