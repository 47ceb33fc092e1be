"""Data files: reading, per-file format detection and row validation.

A data PATH is a folder holding `train.jsonl` and optionally `valid.jsonl` and `test.jsonl`,
or one file. Each file's format is detected from its rows, as mlx-lm's LoRA trainer does
(mlx_lm/tuner/datasets.py), a row at a time, first match wins:

    completions  {"prompt": str, "completion": str}   (the two key names can be remapped)
    chat         {"messages": [{"role", "content"}, ...], "tools": [...] optional}
    text         {"text": str}
    prompts      {"prompt": str} with no completion, or a plain-text line (today's prompt files)

Other keys of a row (ids, metadata) are ignored. Every row of a file must have the file's
format (that of its first row). A file named `*.jsonl`, or whose every non-empty line is a JSON
object, is JSON lines; any other file is plain text, one prompt per non-empty line (the rule of
kd_core/domains/prompt_file.py). Blank lines are skipped; line numbers count every line from 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from kd_core.data_files.bounded import MAX_DATA_FILE_BYTES, read_text_bounded
from kd_core.data_files.errors import DataFileError

Format = Literal["chat", "completions", "text", "prompts"]
FORMATS: tuple[str, ...] = get_args(Format)
# "developer" is OpenAI's newer name for "system"; "tool" carries a tool's result.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")
_LINE_END = re.compile(r"\r\n|\r|\n")  # not str.splitlines: JSON strings may hold U+2028
_EXPECTED = (
    'a JSON object with "messages" (chat), "{p}" and "{c}" (completions), '
    '"text" (text) or only "{p}" (prompts)'
)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. `extra` keeps the message's other keys (tool_calls, name,
    tool_call_id...) in their order: the template receives them as they were written."""

    role: str
    content: str | None  # None only for an assistant turn that carries tool_calls
    extra: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The message as a chat template expects it."""
        return {"role": self.role, "content": self.content, **dict(self.extra)}


@dataclass(frozen=True)
class ChatRow:
    line: int
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None = None  # read-only: passed to the template

    @property
    def assistant_turns(self) -> tuple[int, ...]:
        """Indices of the messages that can be trained: assistant turns with text."""
        return tuple(
            i
            for i, m in enumerate(self.messages)
            if m.role == "assistant" and m.content is not None and m.content.strip()
        )


@dataclass(frozen=True)
class CompletionRow:
    line: int
    prompt: str
    completion: str


@dataclass(frozen=True)
class TextRow:
    line: int
    text: str


@dataclass(frozen=True)
class PromptRow:
    line: int
    prompt: str  # trimmed, as today's prompt files are read


Row = ChatRow | CompletionRow | TextRow | PromptRow


@dataclass(frozen=True)
class DataFile:
    path: Path | str  # a str for a Hugging Face split ("hf:NAME:split")
    format: Format
    rows: tuple[Row, ...]

    @property
    def has_answers(self) -> bool:
        """Whether the rows carry given text to train on (all formats but prompts)."""
        return self.format != "prompts"


@dataclass(frozen=True)
class DataSource:
    """A data PATH as read: `valid`/`test` are None when the folder has no such file (a single
    file is `train` alone)."""

    path: Path | str  # a str for a Hugging Face split
    train: DataFile
    valid: DataFile | None = None
    test: DataFile | None = None


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    names = {dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def _row_error(where: Path | str, n: int, what: str, unit: str = "line") -> DataFileError:
    # One line whatever the row held: newlines and runs of white space folded.
    return DataFileError(f"data: {where} {unit} {n}: {' '.join(what.split())}")


def _message(raw: Any, i: int) -> Message:
    """One message of a chat row; ValueError says what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError(f'"messages"[{i}] should be an object, got {_json_type(raw)}')
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        want = ", ".join(sorted(ROLES))
        raise ValueError(f'"messages"[{i}] has role {role!r:.40}; expected one of {want}')
    if content is None and role == "assistant" and raw.get("tool_calls"):
        pass  # an assistant turn that only calls a tool: rendered, never trained
    elif not isinstance(content, str):
        raise ValueError(f'"messages"[{i}] "content" should be a string, got {_json_type(content)}')
    extra = tuple((k, v) for k, v in raw.items() if k not in ("role", "content"))
    return Message(role, content, extra)


def _chat(obj: dict[str, Any], line: int) -> ChatRow:
    msgs, tools = obj["messages"], obj.get("tools")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f'"messages" should be a non-empty array, got {_json_type(msgs)}')
    messages = tuple(_message(m, i) for i, m in enumerate(msgs))
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise ValueError(f'"tools" should be an array of objects, got {_json_type(tools)}')
    row = ChatRow(line, messages, tuple(tools) if tools is not None else None)
    if not row.assistant_turns:
        raise ValueError('"messages" has no assistant turn with text content to train on')
    return row


def _text_field(obj: dict[str, Any], key: str) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise ValueError(f'"{key}" should be a string, got {_json_type(v)}')
    if not v.strip():
        raise ValueError(f'"{key}" is empty')
    return v


def classify_row(
    obj: Any, line: int, prompt_key: str = "prompt", completion_key: str = "completion"
) -> tuple[Format, Row]:
    """The format of one JSON row and its typed record. ValueError (message without the file)
    when the row fits no format or has the wrong types for the one its keys name."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(obj)}")
    if prompt_key in obj and completion_key in obj:
        p, c = _text_field(obj, prompt_key), _text_field(obj, completion_key)
        return "completions", CompletionRow(line, p, c)
    if "messages" in obj:
        return "chat", _chat(obj, line)
    if "text" in obj:
        return "text", TextRow(line, _text_field(obj, "text"))
    if prompt_key in obj:
        return "prompts", PromptRow(line, _text_field(obj, prompt_key).strip())
    keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
    raise ValueError(f"expected {_EXPECTED.format(p=prompt_key, c=completion_key)}; keys: {keys}")


def _is_json_object(line: str) -> bool:
    s = line.strip()
    if not s.startswith("{"):
        return False
    try:
        return isinstance(json.loads(s), dict)
    except ValueError:
        return False


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    filled = [ln for ln in lines if ln.strip()]
    return bool(filled) and all(_is_json_object(ln) for ln in filled)


def _json_rows(path: Path, lines: list[str]) -> Iterator[tuple[int, Any]]:
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            yield n, json.loads(ln)
        except json.JSONDecodeError as e:
            raise _row_error(path, n, f"not valid JSON ({e.msg}, column {e.colno})") from None


def typed_rows(
    where: Path | str,
    numbered: Iterable[tuple[int, Any]],
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    unit: str = "line",
) -> DataFile:
    """A DataFile from (number, JSON value) pairs: each row classified, one format for all.
    `unit` names the numbers in errors ("line" in a file, "row" in a Hugging Face split)."""
    fmt: Format | None = None
    first = 0
    out: list[Row] = []
    for n, obj in numbered:
        try:
            row_fmt, row = classify_row(obj, n, prompt_key, completion_key)
        except ValueError as e:
            raise _row_error(where, n, str(e), unit) from None
        if fmt is None:
            fmt, first = row_fmt, n
        elif row_fmt != fmt:
            why = f"a {row_fmt} row in a {fmt} file ({unit} {first}); one format per file"
            raise _row_error(where, n, why, unit)
        out.append(row)
    if fmt is None:
        raise DataFileError(f"data: {where} holds no rows")
    return DataFile(where, fmt, tuple(out))


def parse_data_text(
    path: Path, text: str, prompt_key: str = "prompt", completion_key: str = "completion"
) -> DataFile:
    """The rows of `text`, the content of the file at `path` (see the module docstring).
    Raises DataFileError naming the file and the first bad line."""
    lines = _LINE_END.split(text)
    if _is_jsonl(path, lines):
        return typed_rows(path, _json_rows(path, lines), prompt_key, completion_key)
    rows = tuple(PromptRow(n, ln.strip()) for n, ln in enumerate(lines, 1) if ln.strip())
    if not rows:
        raise DataFileError(f"data: {path} holds no rows")
    return DataFile(path, "prompts", rows)


def read_data_file(
    path: str | Path,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    max_bytes: int = MAX_DATA_FILE_BYTES,
) -> DataFile:
    """One data file, read with a size bound, its format detected (DataFileError if bad)."""
    p = Path(path).expanduser()
    return parse_data_text(p, read_text_bounded(p, max_bytes), prompt_key, completion_key)


def read_data(
    path: str | Path,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    max_bytes: int = MAX_DATA_FILE_BYTES,
) -> DataSource:
    """A data PATH: a folder with train.jsonl (+ optional valid.jsonl, test.jsonl) or one file.
    Each file's format is detected on its own (they may differ)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        if not p.exists():
            raise DataFileError(f"data: {p} does not exist")
        return DataSource(p, read_data_file(p, prompt_key, completion_key, max_bytes))
    if not (p / SPLIT_FILES[0]).exists():
        raise DataFileError(
            f"data: {p} has no train.jsonl (a data folder holds train.jsonl and optionally "
            "valid.jsonl and test.jsonl)"
        )
    files = [
        read_data_file(p / name, prompt_key, completion_key, max_bytes)
        if (p / name).exists()
        else None
        for name in SPLIT_FILES
    ]
    assert files[0] is not None
    return DataSource(p, files[0], files[1], files[2])


def row_dict(row: Row) -> dict[str, Any]:
    """The row's content as a JSON object in its format's standard key names, without its line
    number (what split hashing and cache keys read)."""
    if isinstance(row, ChatRow):
        out: dict[str, Any] = {"messages": [m.as_dict() for m in row.messages]}
        if row.tools is not None:
            out["tools"] = list(row.tools)
        return out
    if isinstance(row, CompletionRow):
        return {"prompt": row.prompt, "completion": row.completion}
    if isinstance(row, TextRow):
        return {"text": row.text}
    return {"prompt": row.prompt}
