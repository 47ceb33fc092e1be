"""A data PATH as a domain of a run: its rows, its held-out split, which answers the teacher
gives (its own, or the data's), and what kd_summary.json says about it.

    domain = load_data_domain("my_data/", DataSettings(teacher_answers="auto"), seed=0)
    domain.name          "my_data" (the folder's name, or the file's stem; hf: the dataset's)
    domain.answers       "given" when the rows have answers, "generate" for prompts only
    domain.split.train   the rows trained on; .held_out the rows `kd eval` scores

`teacher_answers`: "given" teacher-forces the teacher on the data's answers (no sampling);
"generate" has it write its own answers to the rows' prompts (today's teacher pass); "both"
trains on the union. "auto" is given when the rows have answers, generate for prompts-only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from kd_core.data_files.errors import DataFileError
from kd_core.data_files.formats import (
    ChatRow,
    CompletionRow,
    DataSource,
    PromptRow,
    Row,
    TextRow,
    read_data,
    row_dict,
)
from kd_core.data_files.hf import is_hf_spec, parse_hf_spec, read_hf_dataset
from kd_core.data_files.render import TrainOn, template_kwargs
from kd_core.data_files.splits import Split, split_rows

TeacherAnswers = Literal["auto", "given", "generate", "both"]
Answers = Literal["given", "generate", "both"]
TEACHER_ANSWERS: tuple[str, ...] = get_args(TeacherAnswers)
TRAIN_ON: tuple[str, ...] = get_args(TrainOn)


@dataclass(frozen=True)
class DataSettings:
    """The settings of kd.toml that say how a data file is read and trained (all required by
    the keys that depend on them: no field is left blank)."""

    teacher_answers: TeacherAnswers = "auto"
    train_on: TrainOn = "all_assistant"
    prompt_key: str = "prompt"
    completion_key: str = "completion"
    # kd.toml's [teacher_chat_template_kwargs] / [student_chat_template_kwargs] tables
    teacher_kwargs: Mapping[str, Any] | None = None
    student_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.teacher_answers not in TEACHER_ANSWERS:
            allowed = ", ".join(repr(x) for x in TEACHER_ANSWERS)
            raise DataFileError(
                f"teacher_answers: {self.teacher_answers!r} is not allowed; use one of {allowed}"
            )
        if self.train_on not in TRAIN_ON:
            allowed = ", ".join(repr(x) for x in TRAIN_ON)
            raise DataFileError(f"train_on: {self.train_on!r} is not allowed; use one of {allowed}")
        for name in ("prompt_key", "completion_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise DataFileError(f"{name}: must be a non-empty key name")
        for role, kwargs in (("teacher", self.teacher_kwargs), ("student", self.student_kwargs)):
            try:  # checked with the settings, before a run takes its folder
                template_kwargs(kwargs)
            except DataFileError as e:
                raise DataFileError(f"{role}_{str(e).removeprefix('data: ')}") from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "teacher_answers": self.teacher_answers,
            "train_on": self.train_on,
            "prompt_key": self.prompt_key,
            "completion_key": self.completion_key,
            "teacher_chat_template_kwargs": dict(self.teacher_kwargs or {}),
            "student_chat_template_kwargs": dict(self.student_kwargs or {}),
        }


@dataclass(frozen=True)
class DataDomain:
    name: str
    spec: str  # the data PATH (absolute) or hf:NAME[:split], as the run reads it
    source: DataSource
    split: Split
    answers: Answers
    settings: DataSettings

    @property
    def format(self) -> str:
        return self.source.train.format

    @property
    def train_file(self) -> str:
        return str(self.source.train.path)

    def prompts(self) -> list[str]:
        """The prompts the teacher answers for "generate"/"both": a prompts or completions
        row's prompt; a chat row's single user turn (DataFileError for a conversation with
        more before its last answer: the teacher pass writes answers to one user message)."""
        return [_prompt_of(r, self.train_file) for r in self.split.train]

    def held_out_prompts(self) -> list[str]:
        """The held-out rows as prompts a model can answer (the Viewer offers them): a
        prompt, or a conversation's last user message before its last answer; text rows
        have none."""
        out = []
        for r in self.split.held_out:
            if isinstance(r, PromptRow | CompletionRow):
                out.append(r.prompt)
            elif isinstance(r, ChatRow):
                users = [m for m in r.messages[: r.assistant_turns[-1]] if m.role == "user"]
                out += [users[-1].content] if users and users[-1].content else []
        return out

    def given_rows(self) -> tuple[Row, ...]:
        return self.split.train if self.answers in ("given", "both") else ()

    def key(self) -> str:
        """The content of what is trained and how: the resume fingerprint's "prompts"."""
        content = [row_dict(r) for r in self.split.train]
        blob = json.dumps([content, self.answers, self.settings.as_dict()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def summary(self, examples: int, turns: int, cut: int, skipped: int) -> dict[str, Any]:
        """kd_summary.json's domains.<name>.data."""
        return {
            "path": self.spec,
            "format": self.format,
            "rows": len(self.source.train.rows),
            "examples": examples,
            "turns_trained": turns,
            "given_or_generated": self.answers,
            "examples_cut": cut,
            "examples_skipped": skipped,
            "train_on": self.settings.train_on,
            "held_out": {
                "from": self.split.held_out_from,
                "path": str(self.split.held_out_path),
                "rows": len(self.split.held_out),
                "lines": list(self.split.held_out_lines),
            },
        }


def _prompt_of(row: Row, where: str) -> str:
    if isinstance(row, PromptRow | CompletionRow):
        return row.prompt
    if isinstance(row, ChatRow):
        before = row.messages[: row.assistant_turns[-1]]
        if len(before) == 1 and before[0].role == "user" and before[0].content:
            return before[0].content
        raise DataFileError(
            f"data: {where} line {row.line}: teacher_answers 'generate' or 'both' needs one "
            f"user message before the answer, this row has {len(before)} messages; use "
            "teacher_answers = 'given'"
        )
    assert isinstance(row, TextRow)
    raise DataFileError(
        f"data: {where} line {row.line}: a text row has no prompt for the teacher to answer; "
        "use teacher_answers = 'given'"
    )


def domain_name(spec: str) -> str:
    """A folder's name, a file's stem, or an hf: dataset's last path part (+ split)."""
    if is_hf_spec(spec):
        name, split = parse_hf_spec(spec)
        return f"{name.rsplit('/', 1)[-1]}-{split}"
    p = Path(spec).expanduser()
    return p.name if p.is_dir() else p.stem


def resolve_answers(wanted: TeacherAnswers, has_answers: bool, where: str) -> Answers:
    if wanted == "auto":
        return "given" if has_answers else "generate"
    if wanted in ("given", "both") and not has_answers:
        raise DataFileError(
            f"teacher_answers: {wanted!r} needs answers in the data, but {where} holds prompts "
            "only; use 'generate' (or 'auto')"
        )
    return wanted


def load_data_domain(
    spec: str, settings: DataSettings, seed: int, allow_download: bool = False
) -> DataDomain:
    """Read and check a data PATH (every row, before anything is trained or written)."""
    keys = {"prompt_key": settings.prompt_key, "completion_key": settings.completion_key}
    if is_hf_spec(spec):
        source = read_hf_dataset(spec, allow_download=allow_download, **keys)
        where = spec
    else:
        source = read_data(spec, **keys)
        where = str(Path(spec).expanduser().absolute())
    answers = resolve_answers(settings.teacher_answers, source.train.has_answers, where)
    split = split_rows(source, seed)
    domain = DataDomain(domain_name(spec), where, source, split, answers, settings)
    if answers in ("generate", "both"):
        domain.prompts()  # a row the teacher cannot answer is refused now, by its line
    return domain
