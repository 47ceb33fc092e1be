"""Tests for the built-in domain prompt sets and the demo corpus generator (pure stdlib, no MLX)."""

from __future__ import annotations

import random
import re
import time

import pytest

from kd_core.demo.corpus import DOMAIN_NAMES, build_corpus, load_domain_file, respond

# markers every response of a domain must carry: the "shape" a trained teacher should learn
SHAPE_MARKERS: dict[str, tuple[str, ...]] = {
    "thinking": ("step by step", "the answer is"),
    "task": ("1. ", "2. ", "3. "),
    "action": ("Next action:", "Reason:"),
    "reflection": ("What went well:", "What to change:"),
    "debug": ("cause:", "Check:", "Fix:"),
    "memory": ("Store:", "Tags:", "Recall when:"),
}
ALLOWED = re.compile(r"^[A-Za-z0-9 .,:;'()?-]+$")  # the charset the demo tokenizer is built for

# words that frame a prompt rather than name its subject; an independent list from the module's
_IGNORE = frozenset(
    re.findall(
        r"[a-z]+",
        "think step steps break task plan list needed finish next action what should agent "
        "tool called reflect outcome happened look back result change debug find likely "
        "remember stored store fact later summarise note memory this that does with when from "
        "into their there about after before have than then them they were your which while "
        "every each",
    )
)


@pytest.fixture(scope="module")
def corpus0() -> list[tuple[str, str, str]]:
    return build_corpus(0)


def _all_prompts() -> dict[str, list[str]]:
    return {d: load_domain_file(d)["train"] + load_domain_file(d)["heldout"] for d in DOMAIN_NAMES}


def _key_words(prompt: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    return {w for w in words if (len(w) >= 4 or w.isdigit()) and w not in _IGNORE}


# --------------------------------------------------------------------------- domain files


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_domain_file_loads(domain: str) -> None:
    data = load_domain_file(domain)
    assert data["name"] == domain
    assert isinstance(data["description"], str) and data["description"].strip()
    assert len(data["train"]) >= 50
    assert len(data["heldout"]) >= 10
    for prompt in data["train"] + data["heldout"]:
        assert isinstance(prompt, str) and "\n" not in prompt
        assert 6 <= len(prompt.split()) <= 25, prompt
        assert ALLOWED.match(prompt), prompt


def test_load_domain_file_returns_a_copy() -> None:
    data = load_domain_file("thinking")
    data["train"].clear()
    assert load_domain_file("thinking")["train"]


def test_unknown_domain_is_refused() -> None:
    with pytest.raises(ValueError):
        load_domain_file("cooking")
    with pytest.raises(ValueError):
        respond("cooking", "Think step by step: why?", random.Random(0))


def test_no_duplicate_prompts_anywhere() -> None:
    seen: dict[str, str] = {}
    for domain, prompts in _all_prompts().items():
        for prompt in prompts:
            key = " ".join(prompt.lower().split())
            assert key not in seen, f"{prompt!r} in {domain} duplicates one in {seen[key]}"
            seen[key] = domain


# --------------------------------------------------------------------------- respond


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_respond_shape_for_first_prompt(domain: str) -> None:
    prompt = load_domain_file(domain)["train"][0]
    for seed in range(30):
        text = respond(domain, prompt, random.Random(seed))
        assert text.strip()
        assert text.isascii() and ALLOWED.match(text), text
        assert 25 <= len(text.split()) <= 70, text
        for marker in SHAPE_MARKERS[domain]:
            assert marker in text, f"{marker!r} missing from {domain} response: {text}"


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_respond_is_deterministic_and_stochastic(domain: str) -> None:
    prompt = load_domain_file(domain)["train"][1]
    assert respond(domain, prompt, random.Random(7)) == respond(domain, prompt, random.Random(7))
    # several plausible answers per prompt: the teacher's soft targets need that spread
    distinct = {respond(domain, prompt, random.Random(s)) for s in range(40)}
    assert len(distinct) >= 4


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_responses_reuse_prompt_key_words(domain: str) -> None:
    prompts = load_domain_file(domain)["train"]
    hits = 0
    for i, prompt in enumerate(prompts):
        text = set(re.findall(r"[a-z0-9]+", respond(domain, prompt, random.Random(i)).lower()))
        hits += bool(_key_words(prompt) & text)
    assert hits / len(prompts) >= 0.8, f"{domain}: {hits}/{len(prompts)} reuse a key word"


def test_responses_depend_on_the_prompt() -> None:
    # same rng seed, different prompts: the responses must differ
    for domain in DOMAIN_NAMES:
        a, b = load_domain_file(domain)["train"][:2]
        assert respond(domain, a, random.Random(3)) != respond(domain, b, random.Random(3))


def test_respond_handles_unexpected_prompts() -> None:
    for domain in DOMAIN_NAMES:
        for prompt in (
            "Tell me about volcanoes.",
            "x",
            "What about the quarterly numbers for Berlin?",
        ):
            text = respond(domain, prompt, random.Random(0))
            assert ALLOWED.match(text) and 25 <= len(text.split()) <= 70, text
            for marker in SHAPE_MARKERS[domain]:
                assert marker in text, text


def test_thinking_arithmetic_is_correct() -> None:
    cases = {
        "how many minutes are in 3 hours?": "180 minutes",
        "a train travels 80 kilometres per hour for 3 hours; how far does it go?": "240 kilometres",
        "if one notebook costs 4 dollars, what do 7 of them cost?": "28 dollars",
    }
    for question, answer in cases.items():
        prompt = "Think step by step: " + question
        for seed in range(5):
            assert f"the answer is {answer}" in respond("thinking", prompt, random.Random(seed))


# --------------------------------------------------------------------------- build_corpus


def test_build_corpus_is_deterministic(corpus0: list[tuple[str, str, str]]) -> None:
    assert build_corpus(0) == corpus0
    assert build_corpus(1) != corpus0


def test_build_corpus_size_and_content(corpus0: list[tuple[str, str, str]]) -> None:
    assert 3000 <= len(corpus0) <= 6000
    for domain, prompt, response in corpus0:
        assert domain in DOMAIN_NAMES
        assert ALLOWED.match(prompt), prompt
        assert ALLOWED.match(response), response
        assert 25 <= len(response.split()) <= 70, response
        for marker in SHAPE_MARKERS[domain]:
            assert marker in response


def test_build_corpus_covers_every_prompt(corpus0: list[tuple[str, str, str]]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for domain, prompt, _ in corpus0:
        counts[(domain, prompt)] = counts.get((domain, prompt), 0) + 1
    files = _all_prompts()
    for domain, prompts in files.items():
        for prompt in prompts:
            assert counts.get((domain, prompt)) == 6, prompt
    json_prompts = {p.lower() for ps in files.values() for p in ps}
    for domain in DOMAIN_NAMES:
        extra = [p for (d, p), n in counts.items() if d == domain and p.lower() not in json_prompts]
        assert len(extra) == 200, domain
        assert all(counts[(domain, p)] == 1 for p in extra)


def test_build_corpus_parameters() -> None:
    small = build_corpus(5, samples_per_prompt=1, extra_prompts_per_domain=0)
    assert len(small) == sum(len(ps) for ps in _all_prompts().values())
    assert (
        len(build_corpus(5, samples_per_prompt=2, extra_prompts_per_domain=10))
        == 2 * len(small) + 60
    )


def test_extra_prompts_follow_domain_style(corpus0: list[tuple[str, str, str]]) -> None:
    style = {
        "thinking": r"^Think step by step: .+\?$",
        "task": r"^.+ task '[^']+'.*\.$",
        "action": r"^.+\. (What is the next action|What should the agent do next"
        r"|Which tool should be called next)\?$",
        "reflection": r"^(Reflect on|Look back on) .+: .+\.$",
        "debug": r"^(Debug this|Debug this bug|Find the likely bug): .+\.$",
        "memory": r"^(Remember that .+\. What should be stored\?|Store this fact for later: .+\.|"
        r"Summarise this note for memory: .+\.)$",
    }
    for domain, prompt, _ in corpus0:
        assert re.match(style[domain], prompt), (domain, prompt)
        assert 6 <= len(prompt.split()) <= 25, prompt


def test_vocabulary_is_moderate(corpus0: list[tuple[str, str, str]]) -> None:
    words = {w for _, p, r in corpus0 for w in re.findall(r"[A-Za-z]+", p + " " + r)}
    assert 1000 <= len(words) <= 3000


def test_build_corpus_is_fast() -> None:
    start = time.perf_counter()
    build_corpus(2)
    assert time.perf_counter() - start < 10.0  # ~0.25 s normally; loose so a busy machine passes
