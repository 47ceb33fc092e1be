"""The teacher's next-token distribution, read in the student's pieces (vocab_strategy "align").

Where the student's next token starts at a teacher token boundary, the teacher's distribution
over *its* next tokens says how the text goes on; the student's next token is the first piece
of that text in its own tokenizer. So each teacher token t carries its probability to
first(text(t)), the student token that starts t's text, summed per student token:

    P*(x) = sum over t with first(text(t)) = x of P_T(t)

Inside a teacher token that the student spells with several pieces (one teacher token, n > 1
student tokens), after the student has read the part r of it, the same reading conditioned on
r gives the teacher's distribution over the student's next piece:

    P*(x | r) = sum over t whose text starts with r (and is longer) with
                first(text(t)[len(r):]) = x of P_T(t), renormalised over those t

Both come from the teacher's top-k at the span's one teacher position (the cache's, offline;
the step's, online). A student with a smaller vocabulary spells most teacher words in several
pieces (the demo SP student: 58% of its tokens sit inside such spans), so without these
targets most of its positions would get no distribution at all, and matching only the tokens
both vocabularies share by string would push down a word's first piece ("_cust") because the
teacher puts its mass on the whole word ("customer"), a token the student lacks.
docs/ARCHITECTURE.md, "Cross-tokenizer distillation", has the measurements behind this.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kd_core.vocab.spans import AlignmentError, backend, token_ends

_UNKNOWN = -2  # first piece not computed yet
_MARK = "\x00"  # a character no token merges across: what follows it is read mid-text


class PieceMap:
    """Teacher token -> its text -> the student token that starts it (cached, lazily)."""

    def __init__(self, teacher_tokenizer: Any, student_tokenizer: Any, t2s: np.ndarray) -> None:
        self._teacher = backend(teacher_tokenizer)
        self._student = student_tokenizer
        self._t2s = t2s  # special tokens (EOS) keep the string map's pairing
        self._first_of_token = np.full(len(t2s), _UNKNOWN, np.int64)
        self._text: dict[int, str | None] = {}
        self._first: dict[str, int] = {}

    def text(self, tid: int) -> str | None:
        """The teacher token's text, or None (special, or part of a multi-byte character)."""
        if tid not in self._text:
            x = self._teacher.decode([int(tid)], skip_special_tokens=True)
            self._text[tid] = None if (not x or "\ufffd" in x) else x
        return self._text[tid]

    def first(self, rest: str) -> int:
        """The student token that starts `rest` read mid-text, or -1."""
        if rest not in self._first:
            out = -1
            try:
                ids, ends = token_ends(self._student, _MARK + rest)
            except AlignmentError:
                ids, ends = [], []
            for i in range(1, len(ids)):
                if ends[i - 1] == len(_MARK) and ends[i] > len(_MARK):
                    out = int(ids[i])
                    break
            self._first[rest] = out
        return self._first[rest]

    def first_of_tokens(self, ids_t: np.ndarray) -> np.ndarray:
        """first(text(t)) for each teacher id (the string map for tokens without text)."""
        ids_t = np.clip(ids_t, 0, len(self._t2s) - 1)
        for t in np.unique(ids_t[self._first_of_token[ids_t] == _UNKNOWN]):
            x = self.text(int(t))
            if x is not None:
                self._first_of_token[t] = self.first(x)
            elif self._teacher.decode([int(t)], skip_special_tokens=True) == "":
                self._first_of_token[t] = self._t2s[t]  # a special token (EOS): as paired
            else:
                self._first_of_token[t] = -1  # part of a character: no piece starts it
        return self._first_of_token[ids_t]

    def project(
        self, ids_t: np.ndarray, lps: np.ndarray, prefixes: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Teacher top-k rows [N, k] (log P, -inf = padding) -> the student's targets [N, k]
        (ids, log P*; -inf = padding). `prefixes[n]` is the part of the row's teacher token
        the student has read ("" or None: a token boundary on both sides)."""
        ids_t = np.asarray(ids_t)
        lps = np.asarray(lps, np.float32)
        k = ids_t.shape[1]
        s = self.first_of_tokens(ids_t)
        p = np.where(np.isfinite(lps) & (s >= 0), np.exp(lps), 0.0)
        for n, r in enumerate(prefixes or ()):
            if r:
                s[n], p[n] = self._inner_row(ids_t[n], lps[n], r)
        return merge_rows(s, p, k)

    def _inner_row(self, ids_t: np.ndarray, lps: np.ndarray, r: str) -> tuple[np.ndarray, ...]:
        s = np.full(len(ids_t), -1, np.int64)
        p = np.zeros(len(ids_t), np.float64)
        for j, (t, lp) in enumerate(zip(ids_t, lps, strict=True)):
            x = self.text(int(t)) if np.isfinite(lp) else None
            if x is not None and len(x) > len(r) and x.startswith(r):
                s[j] = self.first(x[len(r) :])
                p[j] = np.exp(lp) if s[j] >= 0 else 0.0
        total = p.sum()
        return s, (p / total if total > 0 else p)


def merge_rows(s: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum the probabilities of equal student ids within each row; (ids, log P) with the
    merged entries first and -inf padding (the row's order is otherwise kept)."""
    N = s.shape[0]
    live = p > 0
    same = (s[:, :, None] == s[:, None, :]) & live[:, :, None] & live[:, None, :]
    total = (same * p[:, None, :]).sum(axis=-1)
    earlier = np.tril(same, k=-1).any(axis=-1)  # an earlier slot holds the same id
    keep = live & ~earlier
    order = np.argsort(~keep, axis=-1, kind="stable")
    ids = np.take_along_axis(np.where(keep, s, 0), order, axis=-1).astype(np.int32)
    with np.errstate(divide="ignore"):
        lp = np.where(keep, np.log(np.maximum(total, 1e-30)), -np.inf)
    lp = np.take_along_axis(lp, order, axis=-1).astype(np.float32)
    return ids[:, :k].reshape(N, k), lp[:, :k].reshape(N, k)
