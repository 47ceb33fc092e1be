"""The valid-3-gram share (kd_core.demo.quality): high on generator text, low on scrambles."""

from __future__ import annotations

import random

import pytest

from kd_core.demo import quality
from kd_core.demo.corpus import DOMAIN_NAMES, load_domain_file


def test_ngrams_are_lower_case_words() -> None:
    assert quality.words("First, the user's 200 Bus.") == ["first", "the", "user's", "200", "bus"]
    assert quality.ngrams("a b c d") == [("a", "b", "c"), ("b", "c", "d")]
    assert quality.ngrams("a b") == []


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_generator_text_scores_high_and_shuffled_words_low(domain: str) -> None:
    held = load_domain_file(domain)["heldout"]
    fresh = quality.generator_samples(domain, held, 2, seed=5)
    assert quality.valid_share(fresh, domain) >= 0.97
    words = [w for t in fresh for w in quality.words(t)]
    random.Random(0).shuffle(words)
    scrambled = [" ".join(words[i : i + 40]) for i in range(0, len(words), 40)]
    assert quality.valid_share(scrambled, domain) <= 0.05


def test_another_domains_text_scores_low() -> None:
    held = load_domain_file("memory")["heldout"]
    memory_text = quality.generator_samples("memory", held, 2, seed=1)
    assert quality.valid_share(memory_text, "memory") >= 0.97
    assert quality.valid_share(memory_text, "thinking") <= 0.5


def test_empty_text_scores_zero() -> None:
    assert quality.valid_share([], "task") == 0.0
    assert quality.valid_share(["two words"], "task") == 0.0
