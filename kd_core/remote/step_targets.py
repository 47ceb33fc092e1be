"""Online and on-policy steps with a remote teacher: the step's targets fetched per step.

An in-process online step runs the teacher's forward inside the step and compares full
distributions. A remote teacher sends top-k targets, not logits, so with one the step's
micro-batches are scored by the server *before* the step (`fill`) and train exactly as offline
steps do on cached targets: the teacher's top-k at T (float16, as the cache holds them), the
rest one tail bucket. On-policy steps send the student's sampled answers (read in teacher ids)
the same way. Nothing in the step changes: a server that fails here fails before any update,
so the last finished step is a consistent checkpoint (kd_core/train/trainer.py).

Same vocabulary only (truncate / project): an aligned pair's online steps need the teacher's
distribution at positions chosen by the alignment and its pieces projection, which the
offline cache gives (teacher_mode offline) but per-step scoring does not yet.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from kd_core.config import ConfigError, KDConfig
from kd_core.examples.batch import Example, SoftTargets, TeacherTokens
from kd_core.remote.clients import RemoteTeacher
from kd_core.vocab.plan import VocabAlignment


class RemoteStepTargets:
    """Turns a step's TeacherTokens examples (online, on-policy) into SoftTargets ones."""

    def __init__(self, client: RemoteTeacher, cfg: KDConfig, alignment: VocabAlignment) -> None:
        if alignment.aligned:
            raise ConfigError(
                "teacher_mode: a remote teacher serves an aligned pair (two tokenizers) from the "
                "offline cache only; set teacher_mode = 'offline' and on_policy_ratio = 0"
            )
        self.client, self.cfg = client, cfg
        self.t2s = alignment.teacher_to_student
        self.positions = 0  # scored positions (the dashboard's remote throughput)
        self.seconds = 0.0

    def fill(self, micro: list[list[Example]]) -> list[list[Example]]:
        """The micro-batches with the server's top-k targets on their teacher sequences;
        examples with targets already (offline mode's cached ones on its off-policy steps)
        stay as they are."""
        flat = [e for m in micro for e in m]
        todo = [j for j, e in enumerate(flat) if isinstance(e.targets, TeacherTokens)]
        if not todo:
            return micro
        seqs, plens = [], []
        for j in todo:
            t = flat[j].targets
            assert isinstance(t, TeacherTokens)
            # make_batch cuts the teacher's sequence at max_seq_length: score what it keeps.
            seqs.append(np.asarray(t.tokens[: self.cfg.max_seq_length], np.int32))
            plens.append(min(t.prompt_len, len(seqs[-1])))
        t0 = time.perf_counter()
        ids, lps, _ = self.client.score(seqs, plens, self.cfg.temperature, self.cfg.top_k)
        self.seconds += time.perf_counter() - t0
        self.positions += sum(len(i) for i in ids)
        made = list(flat)
        for j, i, lp in zip(todo, ids, lps, strict=True):
            made[j] = self._offline(flat[j], i, lp)
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
        topk_lp[:n] = np.where(keep, lps[:n].astype(np.float16).astype(np.float32), -np.inf)
        valid = np.ones(r, bool) if e.valid is None else np.asarray(e.valid, bool).copy()
        valid[n:] = False
        return replace(e, targets=SoftTargets(topk_ids, topk_lp), valid=valid)
