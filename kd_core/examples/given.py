"""Given text -> the student's training examples (issue 25: a data file's own answers).

The teacher read each row in its own template (kd_core/teacher/given.py); the response of an
example runs from its first trained token to the end, and `Example.valid` keeps the loss on
the assistant's tokens only (a later user turn inside it is read, never trained).

One vocabulary (truncate / project): the student reads the teacher's rendering mapped id by
id, as it reads the teacher's own answers today; a token the student lacks is masked and fed
as EOS. Two tokenizers (align): the student reads the row in *its* template; each assistant
turn's characters are cut into spans covered by a run of teacher tokens and a run of student
tokens (kd_core/vocab/spans.align_ends, as for the teacher's own answers); each turn's
end-of-turn text is cut the same way when both templates write the same one, else (the
teacher's "<|im_end|>", the student's " </s>") it is one span of its own.
A turn that one template does not write as the other does (a trimmed answer) is one span.
A turn that does not fit max_seq_length on either side is dropped whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd_core.data_files import AssistantSpan, Rendered, Row, TrainOn, render_row
from kd_core.examples.aligned import (
    AlignedExamples,
    SpanPair,
    count_spans,
    fill_span_targets,
    one_to_one_map,
    piece_targets,
)
from kd_core.examples.batch import Example, Targets, TeacherTokens
from kd_core.examples.same_vocab import ExampleSet, student_soft_targets
from kd_core.teacher.cache import TeacherOutputs
from kd_core.teacher.given import GivenRow
from kd_core.vocab.plan import VocabAlignment, eos_ids
from kd_core.vocab.spans import AlignedSpan, align_ends


def given_examples(
    given: Sequence[GivenRow], outputs: TeacherOutputs, student_tokenizer: Any,
    alignment: VocabAlignment, online: bool,
) -> ExampleSet:  # fmt: skip
    """One vocabulary: the teacher's rendering in student ids, trained on its trained mask."""
    t2s = alignment.teacher_to_student
    eos = eos_ids(student_tokenizer)[0]
    out = ExampleSet()
    for i, g in enumerate(given):
        seq, plen = outputs.sequences[i], outputs.prompt_lens[i]
        inside = seq < len(t2s)
        mapped = np.where(inside, t2s[np.minimum(seq, len(t2s) - 1)], -1)
        ok = mapped >= 0
        valid = g.trained & ok[plen:]
        out.unmapped += int((g.trained & ~ok[plen:]).sum())
        out.cut += g.cut
        if not valid.any():
            out.skipped += 1
            continue
        targets: Targets
        if online:
            targets = TeacherTokens(seq, plen)
        else:
            targets = student_soft_targets(outputs.topk_ids[i], outputs.topk_logprobs[i], t2s)
        tokens = np.where(ok, mapped, eos).astype(np.int32)
        out.examples.append(Example(tokens, plen, seq[:plen], targets, valid))
    return out


@dataclass(frozen=True)
class _Side:
    """One model's tokens of one assistant turn: body (the content's tokens, with their
    character ends relative to the content) and stop (the end-of-turn tokens after it)."""

    body: np.ndarray  # token indices in the sequence
    ends: list[int]
    stop: np.ndarray
    stop_ends: list[int]  # the stop tokens' character ends relative to the end of turn's text


def _turn_tokens(r: Rendered, trained: np.ndarray, sp: AssistantSpan) -> _Side:
    s, e = r.offsets[:, 0], r.offsets[:, 1]
    overlap = (s < sp.stop_end) & (e > sp.start) & (e > s)
    inside = (s == e) & (s >= sp.start) & (s < sp.stop_end)
    idx = np.flatnonzero((overlap | inside) & trained)
    in_body = s[idx] < sp.end
    body, stop = idx[in_body], idx[~in_body]
    return _Side(
        body, _rel_ends(e[body], sp.start, sp.end), stop, _rel_ends(e[stop], sp.end, sp.stop_end)
    )


def _rel_ends(ends: np.ndarray, start: int, end: int) -> list[int]:
    """Token ends as characters of text[start:end] (kd_core/vocab/spans.token_ends' form:
    non-decreasing, the last at the end of the text)."""
    if not len(ends):
        return []
    out = [int(x) for x in np.maximum.accumulate(np.clip(ends - start, 0, end - start))]
    out[-1] = end - start
    return out


@dataclass
class _Row:
    """The pairs of one aligned row being built, in response positions of each side."""

    pairs: list[SpanPair]
    body_spans: list[AlignedSpan]  # in the virtual text of the row's contents (pieces)
    text: str  # the row's trained contents, one after the other
    s_ends: np.ndarray  # per student response position: its end in `text` (body tokens)
    chars: int = 0
    dropped: bool = False


def _turn(
    row: _Row, t: Rendered, t_tr: np.ndarray, t0: int, s: Rendered, s_tr: np.ndarray, s0: int,
    sp: tuple[AssistantSpan, AssistantSpan], limits: tuple[int, int],
) -> list[AlignedSpan]:  # fmt: skip
    """Add one assistant turn's pairs to `row`; the spans it adds (for the statistics)."""
    a, b = _turn_tokens(t, t_tr, sp[0]), _turn_tokens(s, s_tr, sp[1])
    content = t.text[sp[0].start : sp[0].end]
    every = [*a.body, *a.stop, *b.body, *b.stop]
    fits = (
        len(a.body) and len(b.body)
        and max([*a.body, *a.stop]) < limits[0] and max([*b.body, *b.stop]) < limits[1]
    )  # fmt: skip
    if not fits:
        row.dropped = row.dropped or bool(every)
        return []
    ta, sa = int(a.body[0]) - t0, int(b.body[0]) - s0  # first body token, response positions
    spans: list[AlignedSpan] = []
    if content == s.text[sp[1].start : sp[1].end]:
        al = align_ends(content, t.ids[a.body].tolist(), a.ends, s.ids[b.body].tolist(), b.ends)
        base = len(row.text)
        for x in al.spans:
            shifted = AlignedSpan(
                base + x.start, base + x.end,
                (x.teacher[0] + ta, x.teacher[1] + ta), (x.student[0] + sa, x.student[1] + sa),
            )  # fmt: skip
            if shifted.teacher[0] < 0 or shifted.student[0] < 0:
                continue  # before either response (position 0 of a text row without BOS)
            spans.append(shifted)
            row.pairs.append((shifted.teacher, shifted.student))
        for j, end in enumerate(b.ends):
            if sa + j >= 0:
                row.s_ends[sa + j] = end + base
        row.body_spans += spans
        row.text += content
    else:  # the two templates write the answer differently (one trims it): one span
        whole = ((ta, ta + len(a.body)), (sa, sa + len(b.body)))
        if ta >= 0 and sa >= 0:
            row.pairs.append(whole)
            spans.append(AlignedSpan(0, len(content), *whole))
    if len(a.stop) and len(b.stop):
        row.pairs += _stop_pairs(t, a, sp[0], t0, s, b, sp[1], s0)
    row.chars += len(content)
    return spans


def _stop_pairs(
    t: Rendered, a: _Side, ta: AssistantSpan, t0: int, s: Rendered, b: _Side, sa: AssistantSpan,
    s0: int,
) -> list[SpanPair]:  # fmt: skip
    """The end of turn: cut like an answer where both templates write the same text (the
    demo's "\\n<|eos|>": the student learns where to stop token by token), else one span."""
    tt, st = int(a.stop[0]) - t0, int(b.stop[0]) - s0
    text = t.text[ta.end : ta.stop_end]
    if text == s.text[sa.end : sa.stop_end]:
        t_ids, s_ids = t.ids[a.stop].tolist(), s.ids[b.stop].tolist()
        al = align_ends(text, t_ids, a.stop_ends, s_ids, b.stop_ends)
        return [((x.teacher[0] + tt, x.teacher[1] + tt), (x.student[0] + st, x.student[1] + st))
                for x in al.spans]  # fmt: skip
    return [((tt, tt + len(a.stop)), (st, st + len(b.stop)))]


def student_rendering(
    tokenizer: Any, rows: Sequence[Row], train_on: TrainOn,
    chat_template_kwargs: Mapping[str, Any] | None, source: str,
) -> list[Rendered]:  # fmt: skip
    return [
        render_row(tokenizer, r, train_on=train_on, chat_template_kwargs=chat_template_kwargs,
                   source=source)
        for r in rows
    ]  # fmt: skip


def given_aligned_examples(
    given: Sequence[GivenRow],
    student: Sequence[Rendered],
    outputs: TeacherOutputs,
    alignment: VocabAlignment,
    online: bool,
    max_seq_length: int,
    top_k: int,
) -> AlignedExamples:
    """Two tokenizers: each row in the student's own template, aligned turn by turn with the
    teacher's rendering by the characters of the assistant's answers (module docstring)."""
    t2s = one_to_one_map(alignment)
    k = outputs.topk_ids[0].shape[1] if outputs.topk_ids else top_k
    out = AlignedExamples()
    for i, (g, s) in enumerate(zip(given, student, strict=True)):
        student_side, row = _aligned_row(g, s, outputs, i, max_seq_length)
        if student_side is None:
            out.skipped += 1
            continue
        ids, s0, valid = student_side
        R = len(ids) - s0
        targets = fill_span_targets(row.pairs, R, None if online else outputs, i, t2s, k, online)
        if alignment.pieces is not None and row.body_spans:
            t_resp = [int(x) for x in outputs.sequences[i][outputs.prompt_lens[i] :]]
            s_resp = [int(x) for x in ids[s0:]]
            tokens = (t_resp, s_resp, [int(x) for x in row.s_ends])
            src = None if online else outputs
            piece_targets(targets, row.body_spans, row.text, tokens, src, i, alignment.pieces)
        if online:
            targets.teacher = TeacherTokens(g.sequence, g.prompt_len)
        ex = Example(ids, s0, g.sequence[: g.prompt_len], targets, valid)
        out.cut += g.cut or row.dropped
        count_spans(out.stats, row.body_spans, row.chars, R)
        out.examples.append(ex)
    return out


def _aligned_row(
    g: GivenRow, s: Rendered, outputs: TeacherOutputs, i: int, max_seq_length: int
) -> tuple[tuple[np.ndarray, int, np.ndarray] | None, _Row]:
    """The student's side of a row (its ids, where its response starts, the trained mask
    over the response), or None when no turn fits; and the turns' spans."""
    t_tr = np.zeros(len(g.rendered.ids), bool)
    t_tr[g.prompt_len : len(g.sequence)] = g.trained
    s_tr = s.trained.copy()
    s_tr[0] = False
    kept = s_tr[:max_seq_length]
    row = _Row([], [], "", np.zeros(max(0, len(kept)), np.int64))
    if not kept.any():
        return None, row
    s0 = int(np.argmax(kept))
    row.s_ends = np.zeros(len(kept) - s0, np.int64)
    t0 = outputs.prompt_lens[i]
    limits = (len(outputs.sequences[i]), len(kept))
    valid = np.zeros(len(kept) - s0, bool)
    for sp_t, sp_s in zip(g.rendered.spans, s.spans, strict=True):
        before = len(row.pairs)
        _turn(row, g.rendered, t_tr, t0, s, s_tr, s0, (sp_t, sp_s), limits)
        if len(row.pairs) > before:  # the turn fits: its student tokens are trained
            side = _turn_tokens(s, s_tr, sp_s)
            at = np.concatenate([side.body, side.stop]).astype(np.int64) - s0
            valid[at[at >= 0]] = True
    if not valid.any():
        return None, row
    return (s.ids[: len(kept)].astype(np.int32), s0, valid), row
