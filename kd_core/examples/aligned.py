"""Teacher sequences -> student examples across two tokenizers (vocab_strategy "align").

The student reads its own formatting of the prompt, then the teacher's response *text* in its
own tokens (never the teacher's ids), ending in its own EOS where the teacher's ended. CE is
on those tokens. kd_core.vocab.spans cuts the text into spans covered exactly by a run of teacher
tokens and a run of student tokens; each span gets its KD target at its anchor (the student
position predicting its first token; kd_core/losses/aligned.py says how each kind is compared).
An ending EOS is a one-to-one span of its own.

Offline the targets come from the teacher cache (top-k + tail per teacher position, the chosen
tokens' log-probs, the response text and its character offsets: one cache serves any
student). Online the example holds the teacher's span positions and the step reads the
teacher's distribution there. On-policy steps build the same arrays from the student's own
sampled answer (`sampled_example`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kd_core.examples.batch import Example, SpanTargets, TeacherTokens
from kd_core.generate import student_prompt
from kd_core.losses.aligned import MULTI, ONE_TO_ONE, PIECE
from kd_core.teacher.cache import TeacherOutputs, response_texts
from kd_core.vocab.pieces import PieceMap
from kd_core.vocab.plan import VocabAlignment, eos_ids
from kd_core.vocab.spans import AlignedSpan, AlignmentError, align_ends, decoded_ends, token_ends


@dataclass
class AlignStats:
    """What the alignment kept, summed over the examples (kd_summary.json's vocab_alignment)."""

    chars: int = 0  # response characters
    chars_covered: int = 0  # inside spans that contribute to the KD loss (they fit)
    chars_one_to_one: int = 0
    spans: int = 0
    spans_one_to_one: int = 0

    def summary(self) -> dict[str, Any]:
        share = lambda a, b: round(a / b, 4) if b else 1.0  # noqa: E731
        return {
            "strategy": "align",
            "response_chars_covered": share(self.chars_covered, self.chars),
            "spans_one_to_one": share(self.spans_one_to_one, self.spans),
            "response_chars_one_to_one": share(self.chars_one_to_one, self.chars),
            "spans": self.spans,
        }


@dataclass
class AlignedExamples:
    examples: list[Example] = field(default_factory=list)
    stats: AlignStats = field(default_factory=AlignStats)
    cut: int = 0
    skipped: int = 0
    unmapped: int = 0  # always 0: every response character reaches the student


def describe_alignment(summary: dict[str, Any] | None) -> str:
    """One line for the log and the Models pane."""
    if not summary or summary.get("strategy") != "align" or "spans" not in summary:
        return f"vocabulary: {(summary or {}).get('strategy', '?')}"
    return (
        f"align · {summary['response_chars_covered']:.0%} of response characters covered · "
        f"{summary['spans_one_to_one']:.0%} of {summary['spans']} spans one-to-one "
        f"({summary['response_chars_one_to_one']:.0%} of characters)"
    )


def one_to_one_map(alignment: VocabAlignment) -> np.ndarray:
    """[teacher_size] the student id of each shared teacher token (one to one), else -1."""
    t2s = np.full(alignment.teacher_size, -1, np.int64)
    t2s[alignment.teacher_ids] = alignment.student_ids
    return t2s


def student_only_mask(alignment: VocabAlignment) -> np.ndarray:
    """[student_size] 1.0 for the student tokens the teacher vocabulary lacks."""
    only = np.ones(alignment.student_size, np.float32)
    only[alignment.student_ids] = 0.0
    return only


def split_topk(
    ids_t: np.ndarray, lps: np.ndarray, t2s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher top-k [.., k] -> (matched student ids, their log P (-inf where unmatched),
    the unmatched log P sorted descending, -inf padded)."""
    s = np.where(ids_t < len(t2s), t2s[np.minimum(ids_t, len(t2s) - 1)], -1)
    matched = s >= 0
    ids_s = np.where(matched, s, 0).astype(np.int32)
    lp_m = np.where(matched, lps, -np.inf).astype(np.float32)
    rest = np.where(matched, -np.inf, lps).astype(np.float32)
    rest = -np.sort(-rest, axis=-1)  # descending, -inf last
    return ids_s, lp_m, rest


def _spans(
    text: str, t_body: list[int], t_ends: list[int], student_tokenizer: Any
) -> tuple[list[int], list[int], list[AlignedSpan]]:
    s_ids, s_ends = token_ends(student_tokenizer, text) if text else ([], [])
    al = align_ends(text, t_body, t_ends, s_ids, s_ends)
    return s_ids, s_ends, al.spans


def build_aligned_examples(
    prompts: list[str],
    outputs: TeacherOutputs,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    alignment: VocabAlignment,
    online: bool,
    max_seq_length: int | None = None,
    top_k: int = 1,
) -> AlignedExamples:
    texts, char_ends = outputs.texts, outputs.char_ends
    if texts is None or char_ends is None:
        texts, char_ends = response_texts(teacher_tokenizer, outputs.sequences, outputs.prompt_lens)
    t2s = one_to_one_map(alignment)
    s_eos = eos_ids(student_tokenizer)[0]
    t_eos = set(eos_ids(teacher_tokenizer))
    k = outputs.topk_ids[0].shape[1] if outputs.topk_ids else top_k
    out = AlignedExamples()
    for i, prompt in enumerate(prompts):
        seq, plen = outputs.sequences[i], outputs.prompt_lens[i]
        resp_t = [int(t) for t in seq[plen:]]
        if not resp_t:
            out.skipped += 1
            continue
        ended = resp_t[-1] in t_eos
        body = resp_t[:-1] if ended else resp_t
        text = texts[i]
        s_ids, s_ends, spans = _spans(
            text, body, [int(x) for x in char_ends[i][: len(body)]], student_tokenizer
        )
        resp_s = s_ids + ([s_eos] if ended else [])
        if not resp_s:
            out.skipped += 1
            continue
        s_prompt, cut = student_prompt(student_tokenizer, prompt, len(resp_s), max_seq_length)
        out.cut += cut or bool(outputs.prompt_cut and outputs.prompt_cut[i])
        targets = _span_targets(spans, len(body), len(s_ids), ended, outputs, i, t2s, k, online)
        if alignment.pieces is not None:
            piece_targets(
                targets, spans, text, (body, s_ids, s_ends), outputs if not online else None, i,
                alignment.pieces,
            )  # fmt: skip
        if online:
            targets.teacher = TeacherTokens(seq, plen)
        tokens = np.concatenate([s_prompt, np.array(resp_s, np.int32)])
        ex = Example(tokens, len(s_prompt), seq[:plen], targets)
        fit = len(resp_s)
        if max_seq_length is not None:
            fit = min(len(ex.tokens), max_seq_length) - len(s_prompt)
        if fit <= 0:
            out.skipped += 1
            continue
        count_spans(out.stats, spans, len(text), fit)
        out.examples.append(ex)
    return out


def _span_targets(
    spans: list[AlignedSpan],
    n_body: int,
    n_student: int,
    ended: bool,
    outputs: TeacherOutputs | None,
    i: int,
    t2s: np.ndarray | None,
    k: int,
    online: bool,
) -> SpanTargets:
    """The per-position span arrays (and, offline, the soft targets at the anchors; online
    `outputs` and `t2s` may be None: the step reads the teacher there)."""
    pairs = [(s.teacher, s.student) for s in spans]
    if ended:  # the teacher's EOS and the student's: a one-to-one span of their own
        pairs.append(((n_body, n_body + 1), (n_student, n_student + 1)))
    return fill_span_targets(pairs, n_student + int(ended), outputs, i, t2s, k, online)


SpanPair = tuple[tuple[int, int], tuple[int, int]]  # (teacher [t0, t1), student [s0, s1))


def fill_span_targets(
    pairs: list[SpanPair],
    R: int,
    outputs: TeacherOutputs | None,
    i: int,
    t2s: np.ndarray | None,
    k: int,
    online: bool,
) -> SpanTargets:
    """The per-position span arrays over R response positions, from (teacher, student)
    response-token ranges that cover the same characters; offline, the soft targets at each
    one-to-one anchor from `outputs` (example i), and each longer span's teacher log P."""
    st = SpanTargets(
        span_kind=np.zeros(R, np.int8),
        span_len=np.ones(R, np.int32),
        teacher_span_lp=np.zeros(R, np.float32),
        topk_ids=np.zeros((R, k), np.int32),
        topk_logprobs=np.full((R, k), -np.inf, np.float32),
        uld_logprobs=np.full((R, k), -np.inf, np.float32),
        teacher_span=np.zeros((R, 2), np.int32),
    )
    chosen = None
    if outputs is not None and outputs.chosen_logprobs is not None:
        chosen = outputs.chosen_logprobs[i]
    for (t0, t1), (s0, s1) in pairs:
        st.teacher_span[s0] = (t0, t1)
        if t1 - t0 == 1 and s1 - s0 == 1:
            st.span_kind[s0] = ONE_TO_ONE
            if not online:
                assert outputs is not None and t2s is not None
                ids_s, lp_m, rest = split_topk(
                    outputs.topk_ids[i][t0], outputs.topk_logprobs[i][t0], t2s
                )
                st.topk_ids[s0], st.topk_logprobs[s0], st.uld_logprobs[s0] = ids_s, lp_m, rest
        else:
            st.span_kind[s0] = MULTI
            st.span_len[s0] = s1 - s0
            if chosen is not None:
                st.teacher_span_lp[s0] = float(chosen[t0:t1].sum())
    return st


def sampled_example(
    student_prompt: np.ndarray,
    response: list[int],
    teacher_prompt: np.ndarray,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    top_k: int,
    pieces: PieceMap | None = None,
) -> Example:
    """An on-policy example across two tokenizers: the student's sampled ids are its own
    targets (no re-tokenization: they are what it generated), and the teacher reads the same
    text in its own tokens after its own prompt, ending in its EOS where the student's answer
    ended. The two are aligned by characters as the teacher's text is for off-policy steps;
    the student's side uses decoded offsets, since sampled ids need not be the segmentation
    its tokenizer would give the text. The step reads the teacher at the anchors (online)."""
    s_eos, t_eos = set(eos_ids(student_tokenizer)), eos_ids(teacher_tokenizer)
    ended = bool(response) and response[-1] in s_eos and bool(t_eos)
    body = [int(t) for t in (response[:-1] if ended else response)]
    text, s_ends = decoded_ends(student_tokenizer, body) if body else ("", [])
    try:
        t_ids, t_ends = token_ends(teacher_tokenizer, text) if text else ([], [])
    except AlignmentError:  # text the teacher cannot read: this answer teaches nothing
        t_ids, t_ends, ended = [], [], False
    # A text that decodes to nothing (e.g. special tokens only) aligns nowhere: CE-free
    # on-policy steps then have no KD term for it either, and it trains nothing.
    spans = align_ends(text, t_ids, t_ends, body, s_ends).spans if t_ids and body else []
    t_resp = t_ids + ([t_eos[0]] if ended else [])
    t_prompt = np.asarray(teacher_prompt, np.int32)
    targets = _span_targets(spans, len(t_ids), len(body), ended, None, 0, None, top_k, True)
    if pieces is not None:
        piece_targets(targets, spans, text, (t_ids, body, s_ends), None, 0, pieces)
    t_tokens = np.concatenate([t_prompt, np.array(t_resp, np.int32)]).astype(np.int32)
    targets.teacher = TeacherTokens(t_tokens, len(t_prompt))
    tokens = np.concatenate([student_prompt, np.array(response, np.int32)]).astype(np.int32)
    return Example(tokens, len(student_prompt), t_prompt, targets)


def piece_targets(
    st: SpanTargets,
    spans: list[AlignedSpan],
    text: str,
    tokens: tuple[list[int], list[int], list[int]],
    outputs: TeacherOutputs | None,
    i: int,
    pieces: PieceMap,
) -> None:
    """Projected targets (kd_core/vocab/pieces.py) at every student position of each span
    with one teacher token: its anchor reads the teacher's distribution there as is, each
    later position conditions it on the part of the token already read. They replace the
    span's own terms (flag PIECE). `tokens` = (teacher ids, student ids, the student tokens'
    character ends) of the text. Offline (`outputs` given) the targets are computed now
    from the cache's top-k; online the step computes them from the teacher's forward and
    `st.piece_prefix`."""
    t_ids, s_ids, s_ends = tokens
    rows: list[tuple[int, int, str]] = []  # (student position, teacher position, prefix)
    for sp in spans:
        t0, t1 = sp.teacher
        if t1 - t0 == 1:  # a span of several teacher tokens keeps its probability (MULTI)
            rows += _span_rows(sp, text, t_ids, s_ids, s_ends, pieces)
    if not rows:
        return
    js = np.array([r[0] for r in rows])
    st.span_kind[js] = (st.span_kind[js] | PIECE).astype(np.int8)
    for j, t0, _ in rows:
        if st.span_kind[j] == PIECE:  # inside a span: its one teacher position
            st.teacher_span[j] = (t0, t0 + 1)
    if outputs is None:
        st.piece_prefix = {j: r for j, _, r in rows if r}
        return
    t0s = np.array([r[1] for r in rows])
    ids_s, lp_s = pieces.project(
        outputs.topk_ids[i][t0s], outputs.topk_logprobs[i][t0s], [r[2] for r in rows]
    )
    st.topk_ids[js], st.topk_logprobs[js] = ids_s, lp_s
    st.uld_logprobs[js] = -np.inf


def _span_rows(
    sp: AlignedSpan,
    text: str,
    t_ids: list[int],
    s_ids: list[int],
    s_ends: list[int],
    pieces: PieceMap,
) -> list[tuple[int, int, str]]:
    """(student position, teacher position, part read) for each student token of a span with
    one teacher token, or [] when reading the teacher's own token in pieces does not give
    the student's own tokens (e.g. a word marker the student's tokenizer puts before the
    first word, covering no character, or the bytes of one character): the targets would
    then teach a segmentation the student never reads, and the span keeps its own terms."""
    (t0, _), (s0, s1) = sp.teacher, sp.student
    x = pieces.text(t_ids[t0])
    if x is None:
        return []
    rows = []
    for j in range(s0, s1):
        read = text[sp.start : s_ends[j - 1]] if j > s0 else ""
        if len(read) >= len(x) or pieces.first(x[len(read) :]) != s_ids[j]:
            return []
        rows.append((j, t0, read))
    return rows


def count_spans(stats: AlignStats, spans: list[AlignedSpan], chars: int, fit: int) -> None:
    stats.chars += chars
    for s in spans:
        stats.spans += 1
        stats.spans_one_to_one += s.one_to_one
        if s.student[1] <= fit:
            stats.chars_covered += s.end - s.start
            stats.chars_one_to_one += (s.end - s.start) * s.one_to_one
