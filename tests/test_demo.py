"""The demo pair: the shipped one is intact and loads; a build (reduced size here) is
deterministic, is written in float16 and unpacked to float32, is reused when shipped,
a rebuild is checked against the shipped manifest, and damage means unpack/rebuild."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest
from mlx_lm import load

import kd_core.demo as demo
from kd_core.demo import ensure_demo_pair, verify
from kd_core.demo.build import DemoRecipe, build_demo_pair, manifest
from kd_core.demo.tiny import LlamaSize
from kd_core.models.load import resolve_model

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


def test_shipped_pair_matches_the_recipe_and_loads(demo_dir):
    # A changed DemoRecipe (or phrase table) needs a re-shipped pair: python -m kd_core.demo.build
    assert demo.shipped_pair() == demo.SHIPPED, "kd_core/demo/pair is missing, damaged or stale"
    shipped = manifest(demo.SHIPPED)
    assert shipped["key"] == DemoRecipe().key()
    for rel in shipped["files"]:
        if rel.endswith(".safetensors"):
            assert all(v.dtype == mx.float16 for v in mx.load(str(demo.SHIPPED / rel)).values())
    pair = ensure_demo_pair()  # unpacks, never trains
    assert pair.folder == demo_dir and verify(pair.folder)
    model, tok = load(str(pair.teacher))
    assert all(v.dtype == mx.float32 for _, v in _flat(model.parameters()))
    s_model, _ = load(str(pair.student))
    n = lambda m: sum(v.size for _, v in _flat(m.parameters()))  # noqa: E731
    blocks = lambda m: sum(v.size for layer in m.layers for _, v in _flat(layer.parameters()))  # noqa: E731
    # the student is clearly smaller: half the blocks; the shared 1024 x 128 embedding is 23%
    # of the student's parameters
    assert blocks(s_model) <= blocks(model) / 2 and n(s_model) < 0.6 * n(model)
    assert tok.eos_token == "<|eos|>" and tok.chat_template


def _flat(params):
    from mlx.utils import tree_flatten

    return tree_flatten(params)


def test_builds_loads_and_is_deterministic(demo_dir, tmp_path):
    pair = ensure_demo_pair(SMALL)
    assert verify(pair.folder)
    model, tok = load(str(pair.teacher))
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, SMALL.vocab_size)
    assert model.parameters()["model"]["norm"]["weight"].dtype == mx.float32  # unpacked
    assert tok.eos_token == "<|eos|>" and tok.chat_template
    s_model, _ = load(str(pair.student))
    assert len(s_model.layers) == SMALL.student.num_hidden_layers

    built = demo_dir.with_name("demo.built")
    first = manifest(built)["files"]
    again = build_demo_pair(tmp_path / "again", SMALL)
    assert manifest(again.folder)["files"] == first  # same seed, same bytes
    assert (again.folder / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()
    weights = mx.load(str(again.teacher / "model.safetensors"))
    assert all(v.dtype == mx.float16 for v in weights.values())


def test_shipped_pair_is_used_and_rebuild_compared(demo_dir, tmp_path, monkeypatch):
    shipped = build_demo_pair(tmp_path / "shipped", SMALL).folder
    monkeypatch.setattr(demo, "SHIPPED", shipped)

    def no_training(*a, **k):
        raise AssertionError("the shipped pair must be used, not trained again")

    monkeypatch.setattr(demo, "build_demo_pair", no_training)
    pair = ensure_demo_pair(SMALL)
    assert verify(pair.folder) and json.loads((pair.folder / "manifest.json").read_text())
    assert demo.built_demo_path("demo-student", SMALL) == pair.student

    monkeypatch.setattr(demo, "build_demo_pair", build_demo_pair)
    said: list[str] = []
    ensure_demo_pair(SMALL, rebuild=True, progress=said.append)
    assert any("bit for bit" in s for s in said), said

    # a shipped file that no longer matches the rebuild is reported by name
    data = bytearray((shipped / "student" / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (shipped / "student" / "model.safetensors").write_bytes(bytes(data))
    files = manifest(shipped)["files"]
    files["student/model.safetensors"] = "0" * 64
    (shipped / "manifest.json").write_text(json.dumps({**manifest(shipped), "files": files}))
    said.clear()
    ensure_demo_pair(SMALL, rebuild=True, progress=said.append)
    assert any("differs" in s and "student/model.safetensors" in s for s in said), said


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
    shutil.rmtree(demo_dir.with_name("demo.built") / "teacher")  # the build itself: retrained
    shutil.rmtree(demo_dir)
    assert verify(ensure_demo_pair(SMALL).folder)


def test_demo_names_resolve_through_the_cache(demo_dir, monkeypatch):
    monkeypatch.setattr(demo, "DemoRecipe", lambda: SMALL)
    assert resolve_model("demo-teacher", "teacher").name == "teacher"
    assert resolve_model(None, "student").name == "student"
