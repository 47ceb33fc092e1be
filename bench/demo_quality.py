"""Valid-3-gram share of the demo pair's answers, per domain (kd_core.demo.quality).

    python bench/demo_quality.py [--domains thinking task] [--per-prompt 4]
        [--teacher PATH] [--student PATH] [--adapters DIR] [--json PATH]

For each domain: the generator's own fresh samples (the ceiling), the teacher and the base
student at temperature 0.7 on the 12 held-out prompts (`--per-prompt` answers each), and, with
`--adapters DIR`, the student with DIR/<domain>/ (e.g. the KD and CE-only adapters that
`kd eval --compare` leaves in adapters_kd/compare/kd and .../ce_only). Defaults to the demo pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kd_core  # noqa: E402,F401  (fast BLAS before MLX)
from kd_core.demo import quality  # noqa: E402
from kd_core.demo.corpus import DOMAIN_NAMES, load_domain_file  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domains", nargs="+", default=list(DOMAIN_NAMES), choices=DOMAIN_NAMES)
    p.add_argument("--per-prompt", type=int, default=4, help="answers per held-out prompt")
    p.add_argument("--teacher", help="teacher folder (default: the demo teacher)")
    p.add_argument("--student", help="student folder (default: the demo student)")
    p.add_argument(
        "--adapters",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="student + DIR/<domain> adapters (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args(argv)

    if not (args.teacher and args.student):
        from kd_core.demo import ensure_demo_pair

        pair = ensure_demo_pair(progress=lambda m: print(m, file=sys.stderr))
        args.teacher = args.teacher or str(pair.teacher)
        args.student = args.student or str(pair.student)
    adapters = {}
    for spec in args.adapters:
        name, _, folder = spec.rpartition("=")
        adapters[name or Path(folder).name] = Path(folder)

    cols = ["generator", "teacher", "student", *adapters]
    rows: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[str]]] = {}
    start = time.time()
    print(f"{'domain':<11}" + "".join(f"{c:>11}" for c in cols), flush=True)
    for d in args.domains:
        held = load_domain_file(d)["heldout"]
        gen = quality.generator_samples(d, held, args.per_prompt, 7_777 + args.seed)
        row = {"generator": quality.valid_share(gen, d)}
        samples[d] = {}
        models = [("teacher", args.teacher, None), ("student", args.student, None)]
        models += [(n, args.student, folder / d) for n, folder in adapters.items()]
        for name, path, adapter in models:
            share, answers = quality.heldout_share(path, d, args.per_prompt, adapter, args.seed)
            row[name] = share
            samples[d][name] = answers[:3]
        rows[d] = row
        print(f"{d:<11}" + "".join(f"{row[c]:>11.3f}" for c in cols), flush=True)
    print(f"({time.time() - start:.0f} s; {args.per_prompt} answers per held-out prompt)")
    if args.json:
        out = {
            "metric": "share of word 3-grams of temperature-0.7 answers to the held-out "
            "prompts that the demo-text generator produces for the domain",
            "per_prompt": args.per_prompt,
            "teacher": args.teacher,
            "student": args.student,
            "adapters": {k: str(v) for k, v in adapters.items()},
            "shares": rows,
            "examples": samples,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
