"""A custom domain's prompts file, read and written in its own format.

Two formats, told apart by this rule:

* JSON lines when the file is named `*.jsonl`, or when every non-empty line is a JSON object.
  Each line is an object with a text "prompt" field; its other fields (ids, gold answers...)
  belong to the user and are kept, in their order. A prompt may hold line breaks ("\\n").
* Otherwise plain text: one prompt per non-empty line, taken as it is, even a line that
  starts with "{".

Prompts are trimmed of surrounding white space, as a run reads them. Writing keeps every
prompt that did not change byte for byte (with the blank lines before it), so saving with no
edit leaves the file as it was; a changed JSON-lines prompt keeps its object's other fields.
A UTF-8 byte-order mark and the file's line ending are kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_core.files.atomic import atomic_write_bytes
from kd_core.files.bounded_read import PROMPT_FILE_MAX_BYTES, BoundedReadError, read_bounded

BOM = "\ufeff"
_LINE_END = re.compile(r"\r\n|\r|\n")


class PromptFileError(ValueError):
    """A prompts file that cannot be read or written (one line; kd_core.domains re-raises it
    as DomainError)."""


@dataclass
class PromptEntry:
    """One prompt of a file."""

    prompt: str  # what a run trains on (trimmed)
    fields: dict[str, Any] | None = None  # JSON lines: the whole object, its fields in order
    lead: str = ""  # the blank lines before it in the file
    line: str = ""  # its line in the file, as written ("" for a new prompt)
    end: str = ""  # that line's ending ("" on a last line without one)
    read_as: str | None = None  # the prompt as read (None: a new prompt)

    @property
    def changed(self) -> bool:
        return self.read_as is None or self.prompt.strip() != self.read_as


@dataclass
class PromptFile:
    path: Path
    jsonl: bool
    entries: list[PromptEntry] = field(default_factory=list)
    tail: str = ""  # blank lines after the last prompt
    newline: str = "\n"  # the file's line ending, for lines written anew
    bom: str = ""
    text: str = ""  # the whole file as read: saving checks it did not change meanwhile

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.entries]


def is_jsonl(path: Path, lines: list[str]) -> bool:
    """The format rule (see the module's docstring)."""
    if path.suffix.lower() == ".jsonl":
        return True
    filled = [ln for ln in lines if ln.strip()]
    return bool(filled) and all(_json_object(ln) is not None for ln in filled)


def _json_object(line: str) -> dict[str, Any] | None:
    s = line.strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_prompt_text(path: Path, text: str) -> PromptFile:
    """The prompts of `text`, the content of the file at `path` (PromptFileError if bad)."""
    bom = BOM if text.startswith(BOM) else ""
    body = text.removeprefix(bom)
    parts = _LINE_END.split(body)
    ends = _LINE_END.findall(body) + [""]
    first_end = _LINE_END.search(body)
    pf = PromptFile(
        path,
        jsonl=is_jsonl(path, parts),
        newline=first_end.group() if first_end else "\n",
        bom=bom,
        text=text,
    )
    lead = ""
    for n, (line, end) in enumerate(zip(parts, ends, strict=True), 1):
        if not line.strip():
            lead += line + end
            continue
        fields: dict[str, Any] | None = None
        if pf.jsonl:
            try:
                obj = json.loads(line)
            except ValueError:
                raise PromptFileError(f"domain_files: {path} line {n} is not valid JSON") from None
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptFileError(f"domain_files: {path} line {n} has no text 'prompt' field")
            fields = obj
        else:
            prompt = line
        pf.entries.append(PromptEntry(prompt.strip(), fields, lead, line, end, prompt.strip()))
        lead = ""
    pf.tail = lead
    if not pf.entries:
        raise PromptFileError(f"domain_files: {path} holds no prompts")
    return pf


def read_prompt_file(path: str | Path) -> PromptFile:
    p = Path(path).expanduser()
    try:
        text = read_bounded(p, PROMPT_FILE_MAX_BYTES, "a prompt file").decode("utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"domain_files: {p} does not exist") from None
    except BoundedReadError as e:
        raise PromptFileError(f"domain_files: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"domain_files: cannot read {p} ({e.__class__.__name__})") from None
    return parse_prompt_text(p, text)


def render_prompt_file(pf: PromptFile, entries: list[PromptEntry]) -> str:
    """The file's new text with `entries` as its prompts, in the file's format."""
    pieces: list[str] = []
    for i, e in enumerate(entries, 1):
        prompt = e.prompt.strip()
        if not prompt:
            raise PromptFileError(
                f"domain_files: {pf.path}: prompt {i} is empty; write it or delete it"
            )
        if not e.changed and e.line:
            piece = e.lead + e.line + e.end
        elif pf.jsonl:
            obj = dict(e.fields) if e.fields is not None else {}
            obj["prompt"] = prompt  # an existing "prompt" field keeps its place
            piece = e.lead + json.dumps(obj, ensure_ascii=False) + pf.newline
        else:
            if _LINE_END.search(prompt):
                raise PromptFileError(
                    f"domain_files: {pf.path}: prompt {i} has a line break; a plain-text file "
                    "holds one prompt per line (use a .jsonl file for prompts over several lines)"
                )
            piece = e.lead + prompt + pf.newline
        if pieces and not pieces[-1].endswith(("\n", "\r")):
            pieces[-1] += pf.newline  # the old last line had no line ending
        pieces.append(piece)
    return pf.bom + "".join(pieces) + pf.tail


def save_prompt_file(pf: PromptFile, entries: list[PromptEntry]) -> PromptFile:
    """Write `entries` to pf's file atomically and return the file as now read. Nothing is
    written when nothing changed; a file changed on disk since `pf` was read is not written
    over; what would read back differently (e.g. a plain file whose every line became a JSON
    object) is refused. Errors are one-line PromptFileErrors naming the file."""
    new = render_prompt_file(pf, entries)
    try:
        now = read_bounded(pf.path, PROMPT_FILE_MAX_BYTES, "a prompt file").decode("utf-8")
    except FileNotFoundError:
        now = None
    except BoundedReadError as e:
        raise PromptFileError(f"domain_files: {e}; not saved over it") from None
    except (OSError, UnicodeDecodeError) as e:
        why = e.__class__.__name__
        raise PromptFileError(f"domain_files: cannot read {pf.path} ({why})") from None
    if now != pf.text:
        raise PromptFileError(
            f"domain_files: {pf.path} changed on disk since it was read; not saved over it "
            "(drop the domain and add it again to read it anew)"
        )
    if new == pf.text:
        return pf
    back = parse_prompt_text(pf.path, new)
    if back.prompts != [e.prompt.strip() for e in entries]:
        # The format rule read the new text otherwise: every line of a plain file is now a
        # JSON object (it would read as JSON lines). Refused rather than written wrong.
        raise PromptFileError(
            f"domain_files: {pf.path}: a plain-text file whose every line is a JSON object "
            'is read as JSON lines; not saved (name it .jsonl with a "prompt" per line)'
        )
    try:
        atomic_write_bytes(pf.path, new.encode("utf-8"))
    except OSError as e:
        why = e.strerror or e.__class__.__name__
        raise PromptFileError(f"domain_files: cannot write {pf.path} ({why})") from None
    return back
