"""Vocabulary alignment between teacher and student.

"truncate" keeps the shared id range [0, n): only meaningful when both tokenizers give the
same token string for every id in it (Qwen2.5-7B vs -3B: 152064 vs 151936 embedding rows,
one tokenizer). The seed's example, Qwen (151k) -> Llama (32k) by truncation, would pair
unrelated tokens; `plan_vocab_alignment` detects that and refuses. "project" maps teacher ids
to student ids through the token strings and compares the two distributions over the tokens
both vocabularies have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx
import numpy as np

from kd_core.vocab.pieces import PieceMap


class VocabError(ValueError):
    """Teacher and student vocabularies cannot be aligned as asked (one-line message)."""


Strategy = Literal["truncate", "project", "align"]  # decided: "auto" resolves to one of these
AlignTargets = Literal["pieces", "shared"]


@dataclass(frozen=True, eq=False)
class VocabAlignment:
    """The vocabulary plan of one pair, decided once from the two tokenizers and the config
    (`plan_vocab_alignment`) and never changed: the example builder, the step and the
    evaluation read the resolved strategy and targets form from here, not from the config."""

    strategy: Strategy  # "truncate" includes identical vocabularies
    teacher_size: int  # embedding rows of the teacher (logits width)
    student_size: int
    teacher_ids: np.ndarray  # [M] teacher ids of the shared space
    student_ids: np.ndarray  # [M] student ids, same order
    teacher_to_student: np.ndarray  # [teacher_size] student id or -1
    explanation: str
    # align with targets "pieces": the teacher's tokens read in the student's pieces
    # (kd_core/vocab/pieces.py); None for "shared" (GOLD's form) and the other strategies.
    pieces: Any

    @property
    def aligned(self) -> bool:
        """Two tokenizers, read by characters (the cross-tokenizer examples and step)."""
        return self.strategy == "align"

    @property
    def shared(self) -> int:
        return int(self.teacher_ids.shape[0])

    @property
    def identical(self) -> bool:
        return self.strategy == "truncate" and self.teacher_size == self.student_size


def _normalise(tok: str | None) -> str | None:
    # SentencePiece marks a leading space with U+2581, byte-level BPE with U+0120: the same token.
    if tok is None:
        return None
    return tok.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")


def token_strings(tokenizer: Any) -> list[str | None]:
    """Token string of every id the tokenizer defines (None where an id is unused)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    vocab: dict[str, int] = hf.get_vocab()
    size = max(vocab.values()) + 1 if vocab else 0
    out: list[str | None] = [None] * size
    for tok, i in vocab.items():
        out[i] = tok
    return out


def eos_ids(tokenizer: Any) -> list[int]:
    """The ids that end an answer: the tokenizer's primary `eos_token_id` first (the one its
    chat template writes, and the one kd appends when a model stopped), then any others it
    names (mlx-lm's `eos_token_ids`, e.g. Llama 3's <|end_of_text|> beside <|eot_id|>).
    The one rule for EOS in kd: every caller asks here."""
    primary = getattr(tokenizer, "eos_token_id", None)
    others = sorted(int(i) for i in (getattr(tokenizer, "eos_token_ids", None) or ()))
    if primary is None:
        return others
    return [int(primary), *(i for i in others if i != int(primary))]


def plan_vocab_alignment(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    teacher_size: int,
    student_size: int,
    strategy: str = "auto",
    targets: AlignTargets = "pieces",
) -> VocabAlignment:
    """Decide how to align two vocabularies from their tokenizers.

    auto: truncate when the token strings agree over the shared ids, otherwise align.
    targets (align only): "pieces" reads the teacher's distribution in the student's pieces;
    "shared" is GOLD's form (shared tokens, ULD, whole spans).
    Raises VocabError when `strategy='truncate'` would pair unrelated tokens, or when the
    vocabularies share too little for distillation to mean anything.
    """
    if strategy not in ("auto", "truncate", "project", "align"):
        raise VocabError(
            f"vocab_strategy: {strategy!r} is not allowed; use 'auto', 'truncate', 'project' "
            "or 'align'"
        )
    t_str = token_strings(teacher_tokenizer)
    s_str = token_strings(student_tokenizer)
    n = min(teacher_size, student_size)
    n_tok = min(len(t_str), len(s_str), n)
    mismatched = [i for i in range(n_tok) if t_str[i] != s_str[i]]
    # Ids past a tokenizer's own vocabulary are padding rows of the embedding (never produced);
    # one side defining extra tokens past the other's range is fine: they fall outside [0, n).
    if strategy in ("auto", "truncate") and n_tok > 0 and not mismatched:
        return _truncate_alignment(teacher_size, student_size)
    if strategy == "truncate":
        i = mismatched[0] if mismatched else n_tok
        example = (
            f"teacher id {i} is {t_str[i]!r} but student id {i} is {s_str[i]!r}"
            if mismatched
            else "the tokenizers define different id ranges"
        )
        raise VocabError(
            f"vocab_strategy: 'truncate' would pair unrelated tokens ({example}; "
            f"{len(mismatched)} of {n_tok} shared ids differ); use vocab_strategy = 'project'"
        )
    kind: Literal["project", "align"] = "project" if strategy == "project" else "align"
    t2s = _string_map(t_str, s_str, teacher_size, student_size)
    # End-of-sequence is the same event whatever its spelling.
    t_eos, s_eos = eos_ids(teacher_tokenizer), eos_ids(student_tokenizer)
    if t_eos and s_eos:
        for e in t_eos:
            if e < teacher_size:
                t2s[e] = s_eos[0]
    pieces = None
    if kind == "align" and targets == "pieces":
        pieces = PieceMap(teacher_tokenizer, student_tokenizer, t2s)
    return _projected(kind, t_str, t2s, teacher_size, student_size, pieces)


def _truncate_alignment(teacher_size: int, student_size: int) -> VocabAlignment:
    """One tokenizer: ids mean the same tokens over the shared range."""
    n = min(teacher_size, student_size)
    t2s = np.full(teacher_size, -1, dtype=np.int64)
    t2s[:n] = np.arange(n)
    ids = np.arange(n, dtype=np.int64)
    how = (
        "identical vocabularies"
        if teacher_size == student_size
        else f"same tokenizer, {teacher_size} vs {student_size} embedding rows: "
        f"compared over the shared {n} ids"
    )
    return VocabAlignment("truncate", teacher_size, student_size, ids, ids, t2s, how, None)


def _string_map(
    t_str: list[str | None], s_str: list[str | None], teacher_size: int, student_size: int
) -> np.ndarray:
    """[teacher_size] the student id of the same normalised token string, else -1."""
    s_index: dict[str, int] = {}
    for i, tok in enumerate(s_str[:student_size]):
        key = _normalise(tok)
        if key is not None and key not in s_index:
            s_index[key] = i
    t2s = np.full(teacher_size, -1, dtype=np.int64)
    for i, tok in enumerate(t_str[:teacher_size]):
        key = _normalise(tok)
        if key is not None and key in s_index:
            t2s[i] = s_index[key]
    return t2s


def _projected(
    strategy: Literal["project", "align"],
    t_str: list[str | None],
    t2s: np.ndarray,
    teacher_size: int,
    student_size: int,
    pieces: PieceMap | None,
) -> VocabAlignment:
    """The plan of two tokenizers matched through their token strings.

    project: the student reads the teacher's ids mapped one by one (unmapped ones masked).
    align: the student reads the teacher's text in its own tokens (kd_core/losses/aligned.py);
    the map then names the tokens both vocabularies share, for the exact part of the loss."""
    # Keep the map one-to-one so both sides index the same shared space.
    t_ids, s_ids, seen = [], [], set()
    for t, s in enumerate(t2s):
        if s >= 0 and s not in seen:
            seen.add(int(s))
            t_ids.append(t)
            s_ids.append(int(s))
    covered = len(t_ids) / max(1, sum(1 for t in t_str if t is not None))
    if strategy == "align":
        how = (
            f"different tokenizers: the student reads the teacher's text in its own tokens, "
            f"aligned by characters ({len(t_ids)} tokens in common, {covered:.0%} of the "
            "teacher's)"
        )
    elif covered < 0.05:
        raise VocabError(
            f"vocab_strategy: the tokenizers share only {covered:.1%} of the "
            "teacher's tokens; pick a student of the same model family"
        )
    else:
        how = (
            f"different tokenizers: {len(t_ids)} tokens in common ({covered:.0%} of the "
            "teacher's); teacher ids are projected onto student ids by token string"
        )
    t_arr, s_arr = np.array(t_ids, np.int64), np.array(s_ids, np.int64)
    return VocabAlignment(strategy, teacher_size, student_size, t_arr, s_arr, t2s, how, pieces)


def align_vocab_sizes(
    teacher_logits: mx.array,
    student_logits: mx.array,
    strategy: str = "truncate",
    alignment: VocabAlignment | None = None,
) -> tuple[mx.array, mx.array]:
    """Bring teacher and student logits into one vocabulary space (last axis).

    truncate: both cut to the shared id range (pass `alignment` to have it checked).
    project: both restricted to the tokens they share, in the same order (needs
    `alignment` from `plan_vocab_alignment`, which knows the token strings).
    """
    if strategy == "auto":
        if alignment is None:
            raise VocabError(
                "vocab_strategy: 'auto' needs an alignment planned from the two "
                "tokenizers (plan_vocab_alignment)"
            )
        strategy = alignment.strategy
    if strategy == "truncate":
        if alignment is not None and alignment.strategy != "truncate":
            raise VocabError(
                "vocab_strategy: 'truncate' would pair unrelated tokens for these "
                "tokenizers; use vocab_strategy = 'project'"
            )
        n = min(teacher_logits.shape[-1], student_logits.shape[-1])
        return teacher_logits[..., :n], student_logits[..., :n]
    if strategy in ("project", "align"):  # align: its one-to-one spans compare this way
        if alignment is None:
            raise VocabError(
                "vocab_strategy: 'project' needs an alignment planned from the "
                "two tokenizers (plan_vocab_alignment)"
            )
        t_idx = mx.array(alignment.teacher_ids.astype(np.int32))
        s_idx = mx.array(alignment.student_ids.astype(np.int32))
        return mx.take(teacher_logits, t_idx, axis=-1), mx.take(student_logits, s_idx, axis=-1)
    raise VocabError(f"vocab_strategy: {strategy!r} is not allowed; use 'truncate' or 'project'")
