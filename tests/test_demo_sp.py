"""demo-student-sp: a SentencePiece-style tokenizer with byte fallback (round-trips any text,
sane offsets for kd_core.vocab.spans), half the teacher's vocabulary or less; the shipped student
resolves by name, loads with mlx-lm and is not the teacher's tokenizer (never "truncate");
a reduced recipe builds on first use, reported through the demo build hook."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.utils import load_tokenizer
from tokenizers import Tokenizer

import kd_core.demo as demo
from kd_core.demo.build import DemoRecipe, manifest
from kd_core.demo.sp import SP_NAME, SpRecipe
from kd_core.demo.tiny import SP_BYTE_TOKENS, SPECIAL_TOKENS, LlamaSize, train_sp_tokenizer
from kd_core.models.load import DEMO_NAMES, resolve_model, vocab_size
from kd_core.vocab.plan import plan_vocab_alignment
from kd_core.vocab.spans import align_sequences

SMALL_SP = SpRecipe(
    DemoRecipe(
        vocab_size=320,
        teacher=LlamaSize(48, 1, 96, 2),
        student=LlamaSize(32, 1, 64, 2),
        teacher_steps=3,
        student_steps=2,
        batch_size=4,
        samples_per_prompt=1,
        extra_prompts_per_domain=5,
        max_len=96,
    ),
    vocab_size=400,
    max_len=96,
)
TEXTS = [
    "café 😀",
    "Think step by step: why does ice float on water?",
    "Line one.\nLine two,  two spaces; tabs\tand ümlauts — naïve 東京",
]


@pytest.fixture
def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "demo"
    monkeypatch.setenv("KD_DEMO_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    from kd_core.demo.corpus import build_corpus

    folder = tmp_path_factory.mktemp("sp-tok")
    texts = [f"{p}\n{r}" for _, p, r in build_corpus(0, 1, 5)]
    train_sp_tokenizer(texts, 400, folder)
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_sp_tokenizer_has_byte_fallback_and_round_trips(sp_tok: Tokenizer) -> None:
    spec = json.loads(sp_tok.to_str())
    assert spec["model"]["byte_fallback"] is True
    assert spec["pre_tokenizer"]["type"] == "Metaspace"
    vocab = sp_tok.get_vocab()
    assert len(vocab) == 400 and max(vocab.values()) == 399
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert all(t in vocab for t in SP_BYTE_TOKENS)
    for text in TEXTS:
        enc = sp_tok.encode(text, add_special_tokens=False)
        assert sp_tok.decode(enc.ids) == text
        # offsets move forward and stay inside the text (kd_core.vocab.spans.token_ends reads them)
        assert all(0 <= a <= b <= len(text) for a, b in enc.offsets)
        assert all(x[0] <= y[0] for x, y in zip(enc.offsets, enc.offsets[1:], strict=False))
    emoji = sp_tok.encode("😀", add_special_tokens=False).tokens
    assert emoji[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    # special tokens stay whole (the chat format)
    chat = sp_tok.encode("<|user|>\nhi\n<|assistant|>\n", add_special_tokens=False).tokens
    assert "<|user|>" in chat and "<|assistant|>" in chat


def test_sp_tokenizer_rejects_a_vocabulary_without_room() -> None:
    with pytest.raises(ValueError, match="^vocab_size: "):
        train_sp_tokenizer(["a b"], 300, Path("/nonexistent"))
    with pytest.raises(ValueError, match="^vocab_size: "):
        SpRecipe(vocab_size=260)


def test_aligns_with_the_demo_teacher() -> None:
    """The shipped tokenizers (read from the package: nothing unpacked) on demo responses and
    odd text: every character and every token in exactly one span, in order."""
    from kd_core.demo.corpus import build_corpus

    teacher = Tokenizer.from_file(str(demo.SHIPPED / "teacher" / "tokenizer.json"))
    student = Tokenizer.from_file(str(demo.SHIPPED_SP / "student" / "tokenizer.json"))
    texts = TEXTS + [r for _, _, r in build_corpus(0, 1, 5)][::4]
    spans = one = 0
    for text in texts:
        a = align_sequences(teacher, student, text)
        assert a.spans[0].start == 0 and a.spans[-1].end == len(text)
        assert all(x.end == y.start for x, y in zip(a.spans, a.spans[1:], strict=False))
        assert all(x.teacher[1] == y.teacher[0] for x, y in zip(a.spans, a.spans[1:], strict=False))
        assert all(x.student[1] == y.student[0] for x, y in zip(a.spans, a.spans[1:], strict=False))
        assert a.spans[-1].student[1] == len(a.student_ids)
        assert a.spans[-1].teacher[1] == len(a.teacher_ids)
        spans += len(a.spans)
        one += sum(x.one_to_one for x in a.spans)
    assert 0.4 < one / spans < 0.9  # 60% on the demo corpus (docs/ARCHITECTURE.md)


def test_a_build_is_deterministic(tmp_path: Path) -> None:
    from kd_core.demo.sp import build_sp_student

    build_sp_student(tmp_path / "a", SMALL_SP)
    build_sp_student(tmp_path / "b", SMALL_SP)
    assert manifest(tmp_path / "a") == manifest(tmp_path / "b")  # same recipe, same bytes
    assert SpRecipe(vocab_size=500).key() != SpRecipe().key()


def test_shipped_student_sp_resolves_loads_and_differs(demo_dir: Path) -> None:
    assert SP_NAME in DEMO_NAMES
    # A changed SpRecipe (or DemoRecipe, or phrase table) needs a re-shipped student:
    # python -m kd_core.demo.sp
    assert demo.shipped_sp() == demo.SHIPPED_SP, "kd_core/demo/student_sp is missing or stale"
    assert manifest(demo.SHIPPED_SP)["key"] == SpRecipe().key()
    path = resolve_model(SP_NAME, "student")  # unpacks the shipped copy, never trains
    assert path.parent == Path(str(demo_dir) + "-sp")
    model, tok = load(str(path))
    assert model.parameters()["model"]["norm"]["weight"].dtype == mx.float32
    assert tok.eos_token == "<|eos|>" and tok.chat_template
    teacher_path = resolve_model("demo-teacher", "teacher")
    t_tok = load_tokenizer(teacher_path)
    t_size, s_size = vocab_size(load(str(teacher_path))[0]), vocab_size(model)
    assert s_size <= t_size // 2 and len(tok.get_vocab()) <= s_size
    # the student's size is demo-student's: same blocks, a narrower embedding
    student = load(str(resolve_model("demo-student", "student")))[0]
    assert len(model.layers) == len(student.layers)
    plan = plan_vocab_alignment(t_tok, tok, t_size, s_size)
    assert plan.strategy != "truncate"
    assert tok.decode(tok.encode("café 😀", add_special_tokens=False)) == "café 😀"


def test_reduced_recipe_builds_on_first_use_with_progress(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SpRecipe", lambda: SMALL_SP)
    assert demo.built_demo_path(SP_NAME) is None  # never trains
    seen: list[tuple[str, int, int]] = []
    demo.set_build_progress(lambda what, done, total: seen.append((what, done, total)))
    try:
        path = resolve_model(SP_NAME, "student")
    finally:
        demo.set_build_progress(None)
    assert seen[-1] == ("student-sp", 4, 4)
    assert demo.built_demo_path(SP_NAME) == path
    model, tok = load(str(path))
    assert vocab_size(model) == SMALL_SP.vocab_size
    assert model.parameters()["model"]["norm"]["weight"].dtype == mx.float32
    built = Path(str(demo_dir) + "-sp.built")
    weights = mx.load(str(built / "student" / "model.safetensors"))
    assert all(v.dtype == mx.float16 for v in weights.values())
    assert manifest(built)["key"] == SMALL_SP.key()
