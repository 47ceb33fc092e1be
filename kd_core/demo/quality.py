"""How well does a model write the demo language? The valid-3-gram share.

A model's answers are split into lower-case words; the share of their word 3-grams that the
demo-text generator (kd_core.demo.corpus) itself produces for the same domain is the score.
The reference set comes from many generator samples for every prompt of the domain (train,
held-out and template prompts), drawn with a seed the demo build never uses, so the
generator's own fresh samples score ~1.0 and text that only looks like the demo language
(right words, wrong order) scores low.

The metric is pure stdlib; `sample_answers` (MLX) samples a model's answers the way the
teacher pass does (kd_core.generate.generate_responses: chat template, temperature,
seed).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from kd_core.config import KDConfig
from kd_core.demo.corpus import DOMAIN_NAMES, extra_prompts, load_domain_file, respond
from kd_core.generate import generate_responses
from kd_core.models.load import load_model, release

N = 3
REFERENCE_SEED = 1_000_003  # not a build seed: the reference is fresh generator text
REFERENCE_SAMPLES = 40  # per domain-file prompt
REFERENCE_EXTRA_PROMPTS = 400  # template prompts per domain, 4 samples each

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = N) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


@cache
def reference_ngrams(domain: str, n: int = N) -> frozenset[tuple[str, ...]]:
    """Every word n-gram of many generator samples for the domain (a few seconds, cached)."""
    if domain not in DOMAIN_NAMES:
        raise ValueError(f"unknown domain {domain!r}")
    rng = random.Random(REFERENCE_SEED + DOMAIN_NAMES.index(domain))
    data = load_domain_file(domain)
    found: set[tuple[str, ...]] = set()
    for prompt in data["train"] + data["heldout"]:
        for _ in range(REFERENCE_SAMPLES):
            found.update(ngrams(respond(domain, prompt, random.Random(rng.getrandbits(64))), n))
    for prompt in extra_prompts(domain, rng, REFERENCE_EXTRA_PROMPTS, set()):
        for _ in range(4):
            found.update(ngrams(respond(domain, prompt, random.Random(rng.getrandbits(64))), n))
    return frozenset(found)


def valid_share(texts: Iterable[str], domain: str, n: int = N) -> float:
    """Share of the texts' word n-grams that the generator produces for this domain."""
    ref = reference_ngrams(domain, n)
    grams = [g for t in texts for g in ngrams(t, n)]
    return sum(g in ref for g in grams) / len(grams) if grams else 0.0


def generator_samples(domain: str, prompts: list[str], per_prompt: int, seed: int) -> list[str]:
    """Fresh generator answers (the metric's ceiling: they should score ~1.0)."""
    rng = random.Random(seed)
    return [
        respond(domain, p, random.Random(rng.getrandbits(64)))
        for p in prompts
        for _ in range(per_prompt)
    ]


def sample_answers(
    model_path: str | Path,
    prompts: list[str],
    per_prompt: int = 4,
    temperature: float = 0.7,
    seed: int = 0,
    adapter: str | Path | None = None,
    max_tokens: int = 128,
) -> list[str]:
    """A model's sampled answers, decoded, `per_prompt` per prompt, as the teacher pass does."""
    model, tok = load_model(Path(model_path), "model", adapter_path=adapter)
    cfg = KDConfig(teacher_temperature=temperature, seed=seed, max_tokens=max_tokens)
    many = [p for p in prompts for _ in range(per_prompt)]
    seqs, plens = generate_responses(model, tok, many, cfg)
    eos = set(getattr(tok, "eos_token_ids", None) or [tok.eos_token_id])
    out = []
    for seq, plen in zip(seqs, plens, strict=True):
        ids = [int(t) for t in seq[plen:] if int(t) not in eos]
        out.append(tok.decode(ids))
    release(model)
    return out


def heldout_share(
    model_path: str | Path,
    domain: str,
    per_prompt: int = 4,
    adapter: str | Path | None = None,
    seed: int = 0,
) -> tuple[float, list[str]]:
    """Valid-3-gram share of a model's temperature-0.7 answers to the domain's held-out prompts."""
    answers = sample_answers(
        model_path, load_domain_file(domain)["heldout"], per_prompt, adapter=adapter, seed=seed
    )
    return valid_share(answers, domain), answers


def summary(shares: dict[str, Any]) -> str:
    return " ".join(f"{d} {v:.3f}" for d, v in shares.items())
