"""The teacher's sampling pass: batch sized from the KV cache, every prompt answered once."""

from __future__ import annotations

import numpy as np
from mlx_lm import load

import kd_core.generate as generate_mod
from kd_core.config import KDConfig
from kd_core.generate import format_prompt, generate_responses, generation_batch, kv_bytes_per_token

PROMPTS = [f"Explain step {i} of the plan in a few words." for i in range(7)]


def test_kv_bytes_per_token_reads_the_real_cache(tiny_pair):
    model, _ = load(str(tiny_pair.teacher))
    # 2 layers x (keys + values) x 4 heads x head dim 16 x float32
    assert kv_bytes_per_token(model) == 2 * 2 * 4 * 16 * 4


def test_generation_batch_respects_the_kv_budget(tiny_pair, monkeypatch):
    model, _ = load(str(tiny_pair.teacher))
    assert generation_batch(model, longest=100) == generate_mod.GEN_MAX_BATCH
    monkeypatch.setattr(generate_mod, "GEN_KV_BUDGET", 3 * 1024 * 100)  # room for 3 sequences
    assert generation_batch(model, longest=100) == 3
    monkeypatch.setattr(generate_mod, "GEN_KV_BUDGET", 10)
    assert generation_batch(model, longest=100) == 1  # never zero


def test_every_prompt_answered_in_order_whatever_the_batch(tiny_pair, monkeypatch):
    model, tok = load(str(tiny_pair.teacher))
    cfg = KDConfig(max_tokens=10, seed=3)
    seen: list[tuple[int, int]] = []
    wide, _ = generate_responses(model, tok, PROMPTS, cfg, lambda d, n, _m: seen.append((d, n)))
    monkeypatch.setattr(generate_mod, "GEN_KV_BUDGET", 2 * 1024 * 40)  # two at a time
    narrow, plens = generate_responses(model, tok, PROMPTS, cfg)
    assert seen[-1] == (len(PROMPTS), len(PROMPTS))
    eos = tok.eos_token_id
    for seqs in (wide, narrow):
        assert len(seqs) == len(PROMPTS)
        for prompt, s, plen in zip(PROMPTS, seqs, plens, strict=True):
            ids = format_prompt(tok, prompt)
            assert plen == len(ids) and list(s[:plen]) == ids  # each row keeps its own prompt
            response = s[plen:]
            assert 1 <= len(response) <= cfg.max_tokens
            # EOS only as the last token, and only when the teacher stopped early
            assert eos not in response[:-1].tolist()
            if len(response) < cfg.max_tokens:
                assert response[-1] == eos
    # Same seed and settings, same batch: the same responses (the cache key relies on it).
    again, _ = generate_responses(model, tok, PROMPTS, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(narrow, again, strict=True))
