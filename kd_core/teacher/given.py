"""The teacher on given text (issue 25): teacher-forced on a data file's answers, no sampling.

Each row is rendered by the teacher's own chat template (kd_core/data_files/render.py: the
exact string its tokenizer receives and the mask of the assistant's tokens); one forward over
that sequence gives the teacher's top-k log P_T at every position after the first trained
token (`teacher_pass.soft_targets`, the same function and the same cache format as for the
teacher's own answers). Where the loss reads them is the trained mask, which is rendered
again on every run (it is a pure function of the row, the template and the settings, all in
the key) rather than stored.

The cache key holds the teacher's identity, every row's content, and the rendered ids and
masks themselves: two datasets, two templates or two `train_on` settings never share an
entry, and a targets file is only used when its sequences equal this run's rendering.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kd_core.config import KDConfig
from kd_core.data_files import Rendered, Row, TrainOn, render_row, row_dict
from kd_core.generate import ProgressFn
from kd_core.models.identity import ModelIdentity
from kd_core.models.load import vocab_size
from kd_core.runtime.cpu_streams import stream_count
from kd_core.teacher.cache import (
    CACHE_FORMAT,
    CacheError,
    TeacherOutputs,
    read_or_discard,
    save_outputs,
    targets_key,
)
from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets

# The layout of a given-text entry: bump when what the key covers changes (2: array shapes).
GIVEN_FORMAT = 2


@dataclass(frozen=True)
class GivenRow:
    """One row as the teacher reads it: its sequence (cut to max_seq_length), the position of
    its first trained token (the "prompt length" of the cache's layout) and the trained mask
    over the positions from there on."""

    row: Row
    rendered: Rendered
    sequence: np.ndarray  # [n] int32, n <= max_seq_length
    prompt_len: int  # >= 1: the first position whose token is predicted and trained
    trained: np.ndarray  # [n - prompt_len] bool
    cut: bool  # trained tokens were lost to max_seq_length


def teacher_rows(
    tokenizer: Any,
    rows: Sequence[Row],
    *,
    train_on: TrainOn,
    chat_template_kwargs: Mapping[str, Any] | None,
    max_seq_length: int,
    source: str,
) -> tuple[list[GivenRow], int]:
    """The rows rendered for the teacher, and how many were skipped (no trained token fits).
    Position 0 is never a target (nothing precedes it): a template without BOS loses the
    first token of a `text` row's answer."""
    out: list[GivenRow] = []
    skipped = 0
    for row in rows:
        r = render_row(
            tokenizer, row, train_on=train_on, chat_template_kwargs=chat_template_kwargs,
            source=source,
        )  # fmt: skip
        trained = r.trained.copy()
        trained[0] = False
        kept = trained[:max_seq_length]
        if not kept.any():
            skipped += 1
            continue
        first = int(np.argmax(kept))
        seq = r.ids[:max_seq_length].astype(np.int32)
        cut = bool(trained[max_seq_length:].any())
        out.append(GivenRow(row, r, seq, first, kept[first:].copy(), cut))
    return out, skipped


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            # dtype and shape first: the bytes alone could split into arrays two ways.
            h.update(f"{p.dtype}{p.shape}:".encode() + p.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def given_key(teacher: ModelIdentity, rows: Sequence[Row], given: Sequence[GivenRow]) -> str:
    """What the teacher's targets on given text depend on: which teacher, the rows' content,
    and the exact sequences and masks it reads (template, kwargs, train_on and the cut are in
    them). Never equal to a generation key (`teacher_pass.generation_key`): "given" is in it."""
    content = [row_dict(r) for r in rows]
    arrays = [a for g in given for a in (g.sequence, np.array([g.prompt_len]), g.trained)]
    return _digest("given", GIVEN_FORMAT, CACHE_FORMAT, teacher.weights, teacher.tokenizer,
                   content, *arrays)  # fmt: skip


@dataclass
class GivenPass:
    """The teacher's soft targets on given text for one domain, cached like the teacher
    pass's (`<cache>/teacher/<domain>-given-<key>.safetensors`). `load_teacher` is called
    only on a miss; nothing here samples."""

    cache_dir: Path
    teacher: ModelIdentity
    cfg: KDConfig

    def path(self, domain: str, key: str) -> Path:
        return (
            self.cache_dir / "teacher" / f"{domain}-given-{targets_key(key, self.cfg)}.safetensors"
        )

    def lookup(
        self, domain: str, key: str, given: Sequence[GivenRow], warn: Callable[[str], None] | None
    ) -> TeacherOutputs | None:
        path = self.path(domain, key)
        expect = {"key": targets_key(key, self.cfg)}
        return read_or_discard(path, expect, True, warn, lambda out: _check_same(out, given, path))

    def run(
        self,
        domain: str,
        rows: Sequence[Row],
        given: Sequence[GivenRow],
        load_teacher: Callable[[], tuple[Any, Any]],
        progress: ProgressFn | None = None,
        warn: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TeacherOutputs:
        """Soft targets at every position from each row's first trained token on (offline);
        the float16 rounding of the cache is applied on a miss too, so a run that built the
        cache and one that reads it train on the same targets."""
        key = given_key(self.teacher, rows, given)
        hit = self.lookup(domain, key, given, warn)
        if hit is not None:
            return hit
        seqs = [g.sequence for g in given]
        plens = [g.prompt_len for g in given]
        t0 = time.perf_counter()
        # Rows of similar length share a forward (less padding: measured 25-30% faster on
        # bench/given_text.py's 200 rows); the results are put back in row order.
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
        ids, lps, chosen, vocab = self.score(
            load_teacher, [seqs[i] for i in order], [plens[i] for i in order], progress,
            should_stop,
        )  # fmt: skip
        back = np.argsort(order)
        ids, lps, chosen = ([x[j] for j in back] for x in (ids, lps, chosen))
        lps = [lp.astype(np.float16).astype(np.float32) for lp in lps]
        out = TeacherOutputs(seqs, plens, ids, lps, vocab, prompt_cut=[False] * len(seqs))
        out.chosen_logprobs = chosen
        out.texts, out.char_ends = _texts(given)
        path = self.path(domain, key)
        meta = {"key": targets_key(key, self.cfg), "seconds": round(time.perf_counter() - t0, 3)}
        save_outputs(path, out, meta)
        out.path = path
        return out

    def score(
        self,
        load_teacher: Callable[[], tuple[Any, Any]],
        seqs: list[np.ndarray],
        plens: list[int],
        progress: ProgressFn | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
        """(top-k ids, log P_T, chosen log P_T, teacher vocabulary) on the sequences: the
        in-process teacher's forward (a remote teacher's pass overrides this:
        kd_core/remote/remote_pass.py)."""
        model, _ = load_teacher()
        ids, lps, chosen = soft_targets(
            model, seqs, plens, self.cfg, progress,
            streams=stream_count(self.cfg.cpu_streams, FWD_CHUNK), should_stop=should_stop,
        )  # fmt: skip
        return ids, lps, chosen, vocab_size(model)


def sequences_only(given: Sequence[GivenRow], teacher_vocab: int) -> TeacherOutputs:
    """Online mode: the sequences alone (the step runs the teacher on them)."""
    seqs = [g.sequence for g in given]
    out = TeacherOutputs(seqs, [g.prompt_len for g in given], None, None, teacher_vocab)
    out.prompt_cut = [False] * len(seqs)
    return out


def _texts(given: Sequence[GivenRow]) -> tuple[list[str], list[np.ndarray]]:
    """The rendered text and each response token's character end in it: the cache layout's
    text fields, kept so a cache file reads back whole."""
    ends = []
    for g in given:
        off = g.rendered.offsets[: len(g.sequence)]
        ends.append(off[g.prompt_len :, 1].astype(np.int32))
    return [g.rendered.text for g in given], ends


def _check_same(out: TeacherOutputs, given: Sequence[GivenRow], path: Path) -> None:
    same = len(out.sequences) == len(given) and all(
        o.shape == g.sequence.shape and np.array_equal(o, g.sequence) and p == g.prompt_len
        for o, g, p in zip(out.sequences, given, out.prompt_lens, strict=False)
    )
    if not same:
        raise CacheError(f"teacher cache {path.name} holds other sequences than this rendering")
