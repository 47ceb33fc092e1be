"""Alignment of two tokenizations of the same text by character offsets.

Cross-tokenizer distillation (a byte-level BPE teacher, a SentencePiece student) cannot pair
tokens by id or by string: ~7% of a byte-level teacher's response tokens have no student
token of the same string, and the student never segments text the teacher's way. What two
tokenizations always share is the text. `align_sequences` cuts the text at the character
positions where *both* tokenizations have a token boundary, so that each span is covered
exactly by a run of teacher tokens and a run of student tokens:

    text     "café 😀"
    teacher  c | af  Ã© | ĠðŁĺ Ģ                      (byte-level BPE, GPT-2)
    student  ▁c | afé  | ▁ <0xF0> <0x9F> <0x98> <0x80>  (SentencePiece with byte fallback)
    spans    [0,1) 1:1   [1,4) 2:1   [4,6) 2:5

A span that is one token on both sides can compare next-token distributions; a longer one can
compare the probability each model gives the whole span (the sum of its tokens' log-probs),
as TRL's GOLD does. The quirks this handles, all through the tokenizers' own character offsets
(never by re-reading token strings): SentencePiece's U+2581 word marker and its `<0xNN>`
byte-fallback tokens, byte-level U+0120 / U+010A, a token that holds only part of a multi-byte
character (its neighbours share the character's offsets, so no cut falls inside it), a
leading space that one tokenizer folds into the first word and the other emits alone, and
characters a tokenizer skips (they join the next token's span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class AlignmentError(ValueError):
    """A tokenizer cannot encode the text (one-line message)."""


@dataclass(frozen=True)
class AlignedSpan:
    start: int  # characters [start, end) of the text
    end: int
    teacher: tuple[int, int]  # token indices [i0, i1) of the teacher's tokens of the text
    student: tuple[int, int]

    @property
    def one_to_one(self) -> bool:
        return self.teacher[1] - self.teacher[0] == 1 and self.student[1] - self.student[0] == 1


@dataclass(frozen=True)
class SequenceAlignment:
    text: str
    teacher_ids: list[int]
    student_ids: list[int]
    spans: list[AlignedSpan]


def backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind an mlx-lm TokenizerWrapper, a transformers fast
    tokenizer, or the Tokenizer itself."""
    for attr in ("_tokenizer", "backend_tokenizer"):
        inner = getattr(tokenizer, attr, None)
        if inner is not None and inner is not tokenizer:
            return backend(inner)
    if not hasattr(tokenizer, "encode"):
        raise AlignmentError(f"tokenizer: {type(tokenizer).__name__} has no encode()")
    return tokenizer


def token_ends(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """(token ids of `text`, the character each token's coverage ends at). Token i covers
    [ends[i-1], ends[i]): gaps (characters a tokenizer skipped) go to the next token, and the
    last token reaches the end of the text."""
    try:
        enc = backend(tokenizer).encode(text, add_special_tokens=False)
    except Exception as e:  # e.g. a word-level vocabulary with no unknown token
        raise AlignmentError(f"tokenizer cannot encode {text[:40]!r} ({e})") from None
    ids = list(enc.ids)
    if text and not ids:
        raise AlignmentError(f"tokenizer cannot encode {text[:40]!r}")
    ends, top = [], 0
    for _, end in enc.offsets:
        top = max(top, min(int(end), len(text)))
        ends.append(top)
    if ends:
        ends[-1] = len(text)
    return ids, ends


def _cuts(ends: list[int]) -> dict[int, int]:
    """Character position -> number of tokens before it, at every clean boundary: after the
    last token ending there (tokens sharing a character's offsets are never separated)."""
    cuts = {0: 0}
    for i, end in enumerate(ends):
        # end > 0: a token that covers nothing at the very start joins the first span.
        if end > 0 and (i + 1 == len(ends) or ends[i + 1] > end):
            cuts[end] = i + 1
    return cuts


def decoded_ends(tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    """(the text of generated token ids, the character each token's text ends at).

    For tokens a model *generated* (not necessarily the segmentation its tokenizer would give
    the text): token i ends where the decoding of ids[: i + 1] ends. A prefix that stops
    inside a multi-byte character decodes with trailing U+FFFD; those do not count, so such a
    token ends where the previous one did (it shares the character with the next token)."""
    tok = backend(tokenizer)
    text = tok.decode(list(ids), skip_special_tokens=False)
    ends, partial, top = [], [], 0
    for i in range(len(ids)):
        full = tok.decode(list(ids[: i + 1]), skip_special_tokens=False)
        piece = full.rstrip("\ufffd")
        partial.append(len(piece) < len(full) and not text[len(piece) :].startswith("\ufffd"))
        top = max(top, min(len(piece), len(text)))
        ends.append(top)
    if ends:
        ends[-1] = len(text)
    # A token holding the first bytes of a character shares that character with the token
    # that completes it (as tokenizers' own offsets do): no cut may fall between them.
    for i in range(len(ids) - 2, -1, -1):
        if partial[i]:
            ends[i] = ends[i + 1]
    return text, ends


def align_ends(
    text: str, t_ids: list[int], t_ends: list[int], s_ids: list[int], s_ends: list[int]
) -> SequenceAlignment:
    """The finest partition of `text` into spans covered exactly by a run of teacher tokens
    and a run of student tokens (token i of a side covers [ends[i-1], ends[i]))."""
    if not text:
        return SequenceAlignment(text, t_ids, s_ids, [])
    if t_ids == s_ids and t_ends == s_ends:  # the same tokenization: token by token
        starts = [0, *t_ends[:-1]]
        spans = [
            AlignedSpan(a, b, (i, i + 1), (i, i + 1))
            for i, (a, b) in enumerate(zip(starts, t_ends, strict=True))
        ]
        return SequenceAlignment(text, t_ids, s_ids, spans)
    t_cuts, s_cuts = _cuts(t_ends), _cuts(s_ends)
    shared = sorted(set(t_cuts) & set(s_cuts))
    spans = [
        AlignedSpan(a, b, (t_cuts[a], t_cuts[b]), (s_cuts[a], s_cuts[b]))
        for a, b in zip(shared, shared[1:], strict=False)
    ]
    return SequenceAlignment(text, t_ids, s_ids, spans)


def align_sequences(teacher_tokenizer: Any, student_tokenizer: Any, text: str) -> SequenceAlignment:
    """Spans of `text` covered exactly by a run of teacher tokens and a run of student tokens,
    in order, the finest such partition: every character lies in exactly one span, every token
    of either side in exactly one span. Identical tokenizations align token by token (a token
    that holds only the rest of a split character then has an empty character range)."""
    t_ids, t_ends = token_ends(teacher_tokenizer, text)
    s_ids, s_ends = token_ends(student_tokenizer, text)
    return align_ends(text, t_ids, t_ends, s_ids, s_ends)
