"""The teacher's distribution read in the student's pieces (kd_core/vocab/pieces.py), on two
real tokenizers of different families (../shared/fixtures: GPT-2 byte-level BPE teacher,
Llama 2 SentencePiece student)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_align import _fixture
from tokenizers import Tokenizer

from kd_core.vocab.pieces import PieceMap, merge_rows
from kd_core.vocab.plan import plan_vocab_alignment
from kd_core.vocab.spans import align_sequences, token_ends


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Tokenizer, Tokenizer, PieceMap]:
    tmp: Path = tmp_path_factory.mktemp("tok")
    t, s = _fixture("gpt-2", tmp), _fixture("llama-spm", tmp)
    al = plan_vocab_alignment(t, s, t.get_vocab_size(), s.get_vocab_size(), "auto")
    assert al.strategy == "align" and al.pieces is not None
    return t, s, al.pieces


def _id(tok: Tokenizer, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def _first_piece(s: Tokenizer, text: str) -> int:
    """The student token that starts `text` in a sentence (what `first` must agree with)."""
    ids, ends = token_ends(s, "The" + text)
    return next(i for i, e in zip(ids, ends, strict=True) if e > 3)


def test_a_word_the_student_spells_in_pieces_gives_its_mass_to_the_first_piece(pair):
    t, s, pieces = pair
    words = [" unbelievable", " the", " chocolate", " pizza"]
    ids_t = np.array([[_id(t, w) for w in words]])
    p = np.array([[0.4, 0.3, 0.2, 0.05]])
    ids_s, lp = pieces.project(ids_t, np.log(p))
    got = dict(zip(ids_s[0].tolist(), np.exp(lp[0]).tolist(), strict=True))
    for w, pw in zip(words, p[0], strict=True):
        assert got[_first_piece(s, w)] == pytest.approx(pw, rel=1e-5), w
    assert len(token_ends(s, "The chocolate")[0]) > 3  # really pieces


def test_tokens_that_start_alike_add_up_and_unreadable_ones_drop_out(pair):
    t, s, pieces = pair
    fragment = next(i for i in range(t.get_vocab_size()) if "\ufffd" in t.decode([i]))
    ids_t = np.array([[_id(t, " cat"), _id(t, " catch"), fragment, _id(t, " dog")]])
    ids_s, lp = pieces.project(ids_t, np.log(np.array([[0.3, 0.2, 0.1, 0.25]])))
    q = dict(zip(ids_s[0].tolist(), np.exp(lp[0]).tolist(), strict=True))
    first_cat = _first_piece(s, " cat")
    if first_cat == _first_piece(s, " catch"):
        assert q[first_cat] == pytest.approx(0.5, rel=1e-5)
    assert sum(v for v in q.values() if v > 0) == pytest.approx(0.75, rel=1e-5)
    assert np.isneginf(lp[0]).sum() == len(ids_t[0]) - len([v for v in q.values() if v > 0])


def test_inside_a_token_the_target_conditions_on_the_part_read(pair):
    """After the student has read " photo" of the teacher's " photographer", only teacher
    tokens that start with " photo" count, renormalised; each gives its mass to the student
    token that starts what is left of it."""
    t, s, pieces = pair
    cands = [" photographer", " photograph", " photo", " pizza"]
    ids_t = np.array([[_id(t, w) for w in cands if len(t.encode(w).ids) == 1]])
    assert ids_t.shape[1] == 4
    p = np.array([[0.3, 0.1, 0.2, 0.4]])
    ids_s, lp = pieces.project(ids_t, np.log(p), [" photo"])
    q = {i: v for i, v in zip(ids_s[0].tolist(), np.exp(lp[0]).tolist(), strict=True) if v > 0}
    want: dict[int, float] = {}
    for rest, pw in (("grapher", 0.3), ("graph", 0.1)):  # " photo" itself has no rest
        first = pieces.first(rest)
        want[first] = want.get(first, 0.0) + pw / 0.4
    assert q == pytest.approx(want, rel=1e-5)


def test_the_teachers_own_token_leads_to_the_students_own_token(pair):
    """On real text the projection of the token the teacher wrote lands on the token the
    student reads next, at anchors and inside spans alike (what makes these targets agree
    with the student's own segmentation; 99% measured on the demo pair)."""
    t, s, pieces = pair
    text = (
        "Unbelievable: the photographer ate chocolate pizza. Back up the spreadsheet before "
        "the migration, then verify the checksums and notify the stakeholders and volunteers "
        "technically, photography aside."
    )
    al = align_sequences(t, s, text)
    _, s_ends = token_ends(s, text)
    agree = total = 0
    for sp in al.spans:
        (t0, t1), (s0, s1) = sp.teacher, sp.student
        x = pieces.text(al.teacher_ids[t0])
        if t1 - t0 != 1 or x is None:
            continue
        for j in range(s0, s1):
            read = text[sp.start : s_ends[j - 1]] if j > s0 else ""
            total += 1
            agree += pieces.first(x[len(read) :]) == al.student_ids[j]
    assert total >= 30 and agree / total >= 0.9


def test_merge_rows_sums_equal_ids_and_pads():
    s = np.array([[3, 5, 3, -1], [7, 7, 7, 2]])
    p = np.array([[0.2, 0.3, 0.1, 0.0], [0.1, 0.1, 0.1, 0.4]])
    ids, lp = merge_rows(s, p, 4)
    assert ids[0, :2].tolist() == [3, 5] and np.exp(lp[0, :2]) == pytest.approx([0.3, 0.3])
    assert np.isneginf(lp[0, 2:]).all()
    assert ids[1, :2].tolist() == [7, 2] and np.exp(lp[1, :2]) == pytest.approx([0.3, 0.4])
