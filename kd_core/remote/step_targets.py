"""Online and on-policy steps with a remote teacher: the step's targets fetched per step.

An in-process online step runs the teacher's forward inside the step and compares full
distributions. A remote teacher sends top-k targets, not logits, so with one the step's
micro-batches are scored by the server *before* the step (`fill`) and train exactly as offline
steps do on cached targets: the teacher's top-k at T (float16, as the cache holds them), the
rest one tail bucket. On-policy steps send the student's sampled answers (read in teacher ids)
the same way. Nothing in the step changes: a server that fails here fails before any update,
so the last finished step is a consistent checkpoint (kd_core/train/trainer.py).

Two tokenizers (vocab_strategy "align"): an online step's SpanTargets carry the teacher's own
tokens of the text (the teacher's answer, or the student's sample read by the teacher's
tokenizer); the server scores them, and the anchors' targets are made on the host exactly as
the offline cache makes them (split into shared ids and the ULD rest, span log-probs from the
chosen tokens, PIECE positions read in the student's pieces).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from kd_core.config import KDConfig
from kd_core.examples.aligned import one_to_one_map, split_topk
from kd_core.examples.batch import Example, SoftTargets, SpanTargets, TeacherTokens
from kd_core.losses.aligned import MULTI, ONE_TO_ONE, PIECE, SPAN_KIND
from kd_core.remote.clients import RemoteTeacher
from kd_core.vocab.plan import VocabAlignment


class RemoteStepTargets:
    """Turns a step's examples that the teacher reads in the step (TeacherTokens, online
    SpanTargets) into offline ones, scored by the server."""

    def __init__(self, client: RemoteTeacher, cfg: KDConfig, alignment: VocabAlignment) -> None:
        self.client, self.cfg = client, cfg
        self.t2s = alignment.teacher_to_student
        # Two tokenizers: the one-to-one map of the span anchors and the pieces projection.
        self.one_to_one = one_to_one_map(alignment) if alignment.aligned else None
        self.pieces = alignment.pieces
        self.positions = 0  # scored positions (the dashboard's remote throughput)
        self.seconds = 0.0

    def fill(self, micro: list[list[Example]]) -> list[list[Example]]:
        """The micro-batches with the server's top-k targets on their teacher sequences;
        examples with targets already (offline mode's cached ones on its off-policy steps)
        stay as they are."""
        flat = [e for m in micro for e in m]
        todo = [j for j, e in enumerate(flat) if _teacher_read(e) is not None]
        if not todo:
            return micro
        seqs, plens = [], []
        for j in todo:
            t = _teacher_read(flat[j])
            assert t is not None
            # make_batch cuts the teacher's sequence at max_seq_length: score what it keeps.
            seqs.append(np.asarray(t.tokens[: self.cfg.max_seq_length], np.int32))
            plens.append(min(t.prompt_len, len(seqs[-1])))
        t0 = time.perf_counter()
        ids, lps, chosen = self.client.score(seqs, plens, self.cfg.temperature, self.cfg.top_k)
        self.seconds += time.perf_counter() - t0
        self.positions += sum(len(i) for i in ids)
        made = list(flat)
        for j, i, lp, c in zip(todo, ids, lps, chosen, strict=True):
            lp = lp.astype(np.float16).astype(np.float32)  # as the cache holds them
            e = flat[j]
            made[j] = (
                self._spans(e, i, lp, c)
                if isinstance(e.targets, SpanTargets)
                else (self._offline(e, i, lp))
            )
        out, start = [], 0
        for m in micro:
            out.append(made[start : start + len(m)])
            start += len(m)
        return out

    def _offline(self, e: Example, ids_t: np.ndarray, lps: np.ndarray) -> Example:
        """`e` as build_examples makes an offline example: teacher top-k mapped to student
        ids (a token the student lacks is padding), log-probs rounded to float16 like the
        cache; response positions past the teacher's cut sequence are masked, as make_batch
        masks them for an online example."""
        r = len(e.tokens) - e.prompt_len
        k = self.cfg.top_k
        topk_ids = np.zeros((r, k), np.int32)
        topk_lp = np.full((r, k), -np.inf, np.float32)
        n = min(r, len(ids_t))
        t2s = self.t2s
        ids_s = t2s[np.minimum(ids_t[:n], len(t2s) - 1)]
        keep = (ids_s >= 0) & (ids_t[:n] < len(t2s))
        topk_ids[:n] = np.where(keep, ids_s, 0)
        topk_lp[:n] = np.where(keep, lps[:n], -np.inf)
        valid = np.ones(r, bool) if e.valid is None else np.asarray(e.valid, bool).copy()
        valid[n:] = False
        return replace(e, targets=SoftTargets(topk_ids, topk_lp), valid=valid)

    def _spans(self, e: Example, ids_t: np.ndarray, lps: np.ndarray, chosen: np.ndarray) -> Example:
        """An aligned example read by the teacher in the step, made offline as the cache
        makes it (kd_core/examples/aligned.py: fill_span_targets, piece_targets): at each
        one-to-one anchor the teacher's top-k split into shared ids and the rest (ULD), each
        longer span's log P from the chosen tokens, and at PIECE positions the top-k read in
        the student's pieces. A span whose teacher tokens lie past the cut sequence is dropped,
        as make_batch drops it online."""
        st = e.targets
        assert isinstance(st, SpanTargets) and self.one_to_one is not None
        n = len(chosen)
        kind = st.span_kind.copy()
        topk_ids, topk_lp = st.topk_ids.copy(), st.topk_logprobs.copy()
        uld, span_lp = st.uld_logprobs.copy(), st.teacher_span_lp.copy()
        rows: list[tuple[int, int, str]] = []
        for j in np.flatnonzero(kind):
            t0, t1 = (int(x) for x in st.teacher_span[j])
            if t1 > n:
                kind[j] = 0
                continue
            if kind[j] & SPAN_KIND == ONE_TO_ONE:
                topk_ids[j], topk_lp[j], uld[j] = split_topk(ids_t[t0], lps[t0], self.one_to_one)
            elif kind[j] & SPAN_KIND == MULTI:
                span_lp[j] = float(chosen[t0:t1].sum())
            if kind[j] & PIECE:
                rows.append((int(j), t0, (st.piece_prefix or {}).get(int(j), "")))
        if rows and self.pieces is not None:
            js = np.array([r[0] for r in rows])
            t0s = np.array([r[1] for r in rows])
            topk_ids[js], topk_lp[js] = self.pieces.project(
                ids_t[t0s], lps[t0s], [r[2] for r in rows]
            )
            uld[js] = -np.inf
        targets = replace(
            st, span_kind=kind, topk_ids=topk_ids, topk_logprobs=topk_lp, uld_logprobs=uld,
            teacher_span_lp=span_lp, teacher=None, piece_prefix=None,
        )  # fmt: skip
        return replace(e, targets=targets)


def _teacher_read(e: Example) -> TeacherTokens | None:
    """What the teacher reads for this example in the step: TeacherTokens (one vocabulary) or
    an online SpanTargets' (two); None when the example has its targets already."""
    if isinstance(e.targets, TeacherTokens):
        return e.targets
    if isinstance(e.targets, SpanTargets):
        return e.targets.teacher
    return None
