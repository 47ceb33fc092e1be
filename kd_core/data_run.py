"""A data domain through the run (issue 25): the teacher's side (its targets on the given
answers, its own answers to the prompts, or both) and the student's examples from them.

The distiller calls `data_teacher_pass` in its teacher pass and `data_examples` when it trains
the domain; everything else about the run (release, trainer, checkpoints) is as for prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kd_core.config import ConfigError, KDConfig
from kd_core.data_files.domain import DataDomain
from kd_core.errors import NoExamplesError
from kd_core.events import EventSink, Log
from kd_core.examples.aligned import build_aligned_examples, describe_alignment
from kd_core.examples.given import given_aligned_examples, given_examples, student_rendering
from kd_core.examples.same_vocab import ExampleSet, build_examples
from kd_core.generate import ProgressFn
from kd_core.models.load import vocab_size
from kd_core.teacher.cache import TeacherOutputs
from kd_core.teacher.given import GivenPass, GivenRow, sequences_only, teacher_rows
from kd_core.teacher.teacher_pass import TeacherPass
from kd_core.vocab.plan import VocabAlignment

MIN_ALIGN_COVERAGE = 0.5  # of response characters in spans that reach the KD loss


@dataclass
class DataTargets:
    """The teacher's side of one data domain."""

    given: list[GivenRow] = field(default_factory=list)
    given_out: TeacherOutputs | None = None
    generated: TeacherOutputs | None = None
    skipped: int = 0  # given rows with no trained token within max_seq_length

    @property
    def primary(self) -> TeacherOutputs:
        out = self.given_out if self.given_out is not None else self.generated
        assert out is not None
        return out


@dataclass
class DataPassArgs:
    """What the data teacher pass needs from the run."""

    cfg: KDConfig
    tpass: TeacherPass
    gpass: GivenPass
    teacher_tokenizer: Callable[[], Any]  # loads the tokenizer alone (rendering, keys)
    load_teacher: Callable[[], tuple[Any, Any]]  # the model, only on a cache miss
    progress: ProgressFn | None = None
    warn: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None
    world: Any = None
    remote_vocab: int = 0  # a remote teacher's vocabulary (its model stays on the server)


def data_teacher_pass(name: str, domain: DataDomain, a: DataPassArgs) -> DataTargets:
    """Offline: the teacher's soft targets on the given answers (teacher-forced, never
    sampled) and/or its own answers to the prompts. Online: the sequences alone."""
    cfg, out = a.cfg, DataTargets()
    if domain.answers in ("generate", "both"):
        out.generated = a.tpass.run(
            name, domain.prompts(), cfg.teacher_mode == "offline", a.load_teacher,
            a.progress, a.warn, world=a.world, should_stop=a.should_stop,
        )  # fmt: skip
    rows = domain.given_rows()
    if not rows:
        return out
    out.given, out.skipped = teacher_rows(
        a.teacher_tokenizer(), rows, train_on=domain.settings.train_on,
        chat_template_kwargs=domain.settings.teacher_kwargs,
        max_seq_length=cfg.max_seq_length, source=domain.train_file,
    )  # fmt: skip
    if not out.given:
        return out
    if cfg.teacher_mode == "online":
        model, _ = a.load_teacher()
        vocab = vocab_size(model) if model is not None else a.remote_vocab
        out.given_out = sequences_only(out.given, vocab)
    else:
        out.given_out = a.gpass.run(
            name, [g.row for g in out.given], out.given, a.load_teacher, a.progress, a.warn,
            a.should_stop,
        )  # fmt: skip
    return out


@dataclass
class DataExamples:
    examples: ExampleSet
    turns_trained: int


def data_examples(
    domain: DataDomain, targets: DataTargets, student_tokenizer: Any, teacher_tokenizer: Any,
    alignment: VocabAlignment, cfg: KDConfig,
) -> DataExamples:  # fmt: skip
    """The student's examples: the given answers', then the generated ones' (the union for
    teacher_answers = "both")."""
    online = cfg.teacher_mode == "online"
    aligned = alignment.strategy == "align"
    parts: list[ExampleSet] = []
    turns = 0
    if targets.given_out is not None:
        if aligned:
            student = student_rendering(
                student_tokenizer, [g.row for g in targets.given], domain.settings.train_on,
                domain.settings.student_kwargs, domain.train_file,
            )  # fmt: skip
            al = given_aligned_examples(
                targets.given, student, targets.given_out, alignment, online,
                cfg.max_seq_length, cfg.top_k,
            )  # fmt: skip
            parts.append(ExampleSet(al.examples, 0, al.cut, al.skipped, al.stats.summary()))
        else:
            parts.append(
                given_examples(
                    targets.given, targets.given_out, student_tokenizer, alignment, online
                )
            )
        turns += sum(len(g.rendered.spans) for g in targets.given)
    if targets.generated is not None:
        prompts = domain.prompts()
        if aligned:
            al = build_aligned_examples(
                prompts, targets.generated, teacher_tokenizer, student_tokenizer, alignment,
                online, cfg.max_seq_length, cfg.top_k,
            )  # fmt: skip
            parts.append(ExampleSet(al.examples, 0, al.cut, al.skipped, al.stats.summary()))
        else:
            parts.append(
                build_examples(prompts, targets.generated, student_tokenizer, alignment, online,
                               cfg.max_seq_length)
            )  # fmt: skip
        turns += len(parts[-1].examples)
    merged = ExampleSet(
        [e for p in parts for e in p.examples],
        sum(p.unmapped for p in parts),
        sum(p.cut for p in parts),
        sum(p.skipped for p in parts) + targets.skipped,
        _merge_alignment([p.vocab_alignment for p in parts]),
    )
    return DataExamples(merged, turns)


def _merge_alignment(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One coverage block over both kinds of examples (the spans' counts add; the shares are
    weighted by spans: the given and generated answers are counted alike)."""
    have = [p for p in parts if p]
    if len(have) <= 1:
        return have[0] if have else None
    spans = sum(p["spans"] for p in have) or 1
    out = {"strategy": "align", "spans": sum(p["spans"] for p in have)}
    for k in ("response_chars_covered", "spans_one_to_one", "response_chars_one_to_one"):
        out[k] = round(sum(p[k] * p["spans"] for p in have) / spans, 4)
    return out


def checked_data_examples(
    name: str, domain: DataDomain, targets: DataTargets, tokenizers: tuple[Any, Any],
    alignment: VocabAlignment, cfg: KDConfig, sink: EventSink,
) -> tuple[ExampleSet, dict[str, Any]]:  # fmt: skip
    """`data_examples` for the run: none fitting, or an alignment covering under half the
    answers' characters, is a one-line error; the counts are logged; with kd_summary.json's
    domains.<name>.data block. `tokenizers` = (student's, teacher's)."""
    built = data_examples(domain, targets, tokenizers[0], tokenizers[1], alignment, cfg)
    ex = built.examples
    if not ex.examples:
        raise NoExamplesError(
            f"domain: 0 of {len(domain.split.train)} rows of {name!r} fit in max_seq_length "
            f"{cfg.max_seq_length}; raise max_seq_length or shorten the rows"
        )
    if ex.vocab_alignment is not None:
        covered = ex.vocab_alignment["response_chars_covered"]
        sink(Log(f"{name}: {describe_alignment(ex.vocab_alignment)}"))
        if covered < MIN_ALIGN_COVERAGE:
            raise ConfigError(
                f"vocab_strategy: align covers only {covered:.0%} of {name!r}'s answer "
                f"characters (at least {MIN_ALIGN_COVERAGE:.0%} needed); raise "
                f"max_seq_length ({cfg.max_seq_length})"
            )
    if ex.cut or ex.skipped or ex.unmapped:
        sink(
            Log(
                f"{name}: {ex.cut} examples cut and {ex.skipped} skipped to fit max_seq_length "
                f"{cfg.max_seq_length}; {ex.unmapped} answer tokens have no student token "
                "(masked)",
                "warning",
            )
        )
    summary = domain.summary(len(ex.examples), built.turns_trained, ex.cut, ex.skipped)
    return ex, summary
