"""truncate / project on tokenizers built locally: agreeing, prefix-padded, unrelated."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load_tokenizer

from kd_core.demo.tiny import SPECIAL_TOKENS, train_tokenizer, write_tokenizer
from kd_core.vocab.plan import VocabError, align_vocab_sizes, plan_vocab_alignment

ENGLISH = [
    "the quick brown fox jumps over the lazy dog " * 3,
    "distillation transfers dark knowledge from a teacher to a student " * 3,
    "a student learns the relative confidence of the teacher " * 3,
]
OTHER = ["zzyx qqv wwk " * 5, "0123 4567 89 " * 5, "kkkk llll mmmm nnnn " * 5]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toks")
    train_tokenizer(ENGLISH, 300, root / "a")
    train_tokenizer(OTHER, 300, root / "b")
    # prefix-padded: a's tokenizer with extra tokens appended at the end
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(root / "a" / "tokenizer.json"))
    t.add_tokens(["<extra_1>", "<extra_2>", "<extra_3>"])
    write_tokenizer(t, root / "a_plus")
    return {k: root / k for k in ("a", "b", "a_plus")}


def _tok(p: Path):
    return load_tokenizer(p)


def test_agreeing_tokenizers_truncate(toks):
    a = _tok(toks["a"])
    al = plan_vocab_alignment(a, a, 300, 320)
    assert al.strategy == "truncate" and al.shared == 300
    t, s = align_vocab_sizes(mx.zeros((1, 2, 300)), mx.zeros((1, 2, 320)), "truncate", al)
    assert t.shape[-1] == s.shape[-1] == 300


def test_prefix_padded_truncates_over_shared_ids(toks):
    a, ap = _tok(toks["a"]), _tok(toks["a_plus"])
    al = plan_vocab_alignment(ap, a, len(ap.get_vocab()), len(a.get_vocab()))
    assert al.strategy == "truncate"
    assert al.teacher_to_student[len(a.get_vocab())] == -1  # the extra tokens have no partner


def test_unrelated_truncate_refused_with_reason(toks):
    a, b = _tok(toks["a"]), _tok(toks["b"])
    with pytest.raises(VocabError, match="unrelated tokens.*project"):
        plan_vocab_alignment(a, b, 300, 300, strategy="truncate")


def test_project_maps_by_token_string(toks):
    a, b = _tok(toks["a"]), _tok(toks["b"])
    assert plan_vocab_alignment(a, b, 300, 300, strategy="auto").strategy == "align"
    al = plan_vocab_alignment(a, b, 300, 300, strategy="project")
    assert al.strategy == "project"
    va, vb = a.get_vocab(), b.get_vocab()
    for t_id, s_id in zip(al.teacher_ids, al.student_ids, strict=True):
        t_str = next(k for k, v in va.items() if v == t_id)
        s_str = next(k for k, v in vb.items() if v == s_id)
        assert t_str == s_str
    # special tokens and the byte alphabet are shared, so the map is not empty
    assert al.shared >= len(SPECIAL_TOKENS)
    tl = mx.array(np.arange(300, dtype=np.float32)[None, None])
    sl = mx.array(-np.arange(300, dtype=np.float32)[None, None])
    t, s = align_vocab_sizes(tl, sl, "project", al)
    assert t.shape[-1] == s.shape[-1] == al.shared
    assert np.array_equal(np.array(t)[0, 0], al.teacher_ids.astype(np.float32))
    assert np.array_equal(np.array(s)[0, 0], -al.student_ids.astype(np.float32))


def test_project_without_alignment_is_a_clear_error():
    with pytest.raises(VocabError, match="project"):
        align_vocab_sizes(mx.zeros((1, 3)), mx.zeros((1, 4)), "project")
