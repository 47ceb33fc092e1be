"""The demo pair: builds (reduced size here), loads with mlx_lm.load, damaged => rebuilt."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm import load

from kd_core.demo import ensure_demo_pair, verify
from kd_core.demo.build import DemoRecipe
from kd_core.demo.tiny import LlamaSize
from kd_core.models import resolve_model

SMALL = DemoRecipe(
    vocab_size=320,
    teacher=LlamaSize(48, 1, 96, 2),
    student=LlamaSize(32, 1, 64, 2),
    teacher_steps=3,
    student_steps=2,
    batch_size=4,
    samples_per_prompt=1,
    extra_prompts_per_domain=5,
    max_len=96,
)


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    d = tmp_path / "demo"
    monkeypatch.setenv("KD_DEMO_DIR", str(d))
    return d


def test_builds_loads_and_is_deterministic(demo_dir, tmp_path):
    pair = ensure_demo_pair(SMALL)
    assert verify(pair.folder)
    model, tok = load(str(pair.teacher))
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, SMALL.vocab_size)
    assert tok.eos_token == "<|eos|>" and tok.chat_template
    s_model, _ = load(str(pair.student))
    assert len(s_model.layers) == SMALL.student.num_hidden_layers
    first = json.loads((pair.folder / "manifest.json").read_text())["files"]

    from kd_core.demo.build import build_demo_pair

    again = build_demo_pair(tmp_path / "again", SMALL)
    second = json.loads((again.folder / "manifest.json").read_text())["files"]
    assert first == second  # same seed, same bytes


def test_damaged_cache_is_rebuilt_not_used(demo_dir):
    pair = ensure_demo_pair(SMALL)
    weights = pair.teacher / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not verify(pair.folder)
    rebuilt = ensure_demo_pair(SMALL)
    assert verify(rebuilt.folder)
    (rebuilt.student / "config.json").unlink()  # missing file: also rebuilt
    assert verify(ensure_demo_pair(SMALL).folder)


def test_demo_names_resolve_through_the_cache(demo_dir, monkeypatch):
    import kd_core.demo as demo

    monkeypatch.setattr(demo, "DemoRecipe", lambda: SMALL)
    assert resolve_model("demo-teacher", "teacher").name == "teacher"
    assert resolve_model(None, "student").name == "student"
