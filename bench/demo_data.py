"""A `completions` data folder per built-in domain, built from the demo corpus's own answers
(kd_core/demo/corpus.respond: the text generator the demo teacher was trained on), for
measuring distillation on given text (README: "Distil on your own data").

    python -m bench.demo_data OUT [--samples 1] [--seed 7]

writes OUT/<domain>/train.jsonl (each training prompt with `samples` answers) and
OUT/<domain>/valid.jsonl (each held-out prompt with one answer): the rows a user with curated
answers would bring. The seed is not the corpus's (0), so the answers are new draws.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from kd_core.demo.corpus import DOMAIN_NAMES, load_domain_file, respond


def write_domain(out: Path, domain: str, samples: int, seed: int) -> Path:
    rng = random.Random(f"{seed}:{domain}")
    spec = load_domain_file(domain)
    folder = out / domain
    folder.mkdir(parents=True, exist_ok=True)
    for name, prompts, n in (("train", spec["train"], samples), ("valid", spec["heldout"], 1)):
        rows = [
            {"prompt": p, "completion": respond(domain, p, random.Random(rng.getrandbits(64)))}
            for p in prompts
            for _ in range(n)
        ]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=1, help="answers per training prompt")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--domain", action="append", choices=DOMAIN_NAMES)
    args = ap.parse_args()
    for d in args.domain or DOMAIN_NAMES:
        print(write_domain(args.out, d, args.samples, args.seed))


if __name__ == "__main__":
    main()
