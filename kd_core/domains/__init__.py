"""Domains: named prompt sets. Six are built in; users add their own from files.

`DOMAIN_PROMPTS["thinking"]["examples"]` are the training prompts (as in the seed);
`["heldout"]` the evaluation prompts, never trained on; `["description"]` one sentence.
A custom domain file holds one prompt per line, or JSON lines with a "prompt" field (see
prompt_file.py for the rule that tells them apart, and how a file is written back).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kd_core.data_files.domain import domain_name
from kd_core.domains.prompt_file import (
    PromptEntry,
    PromptFile,
    PromptFileError,
    read_prompt_file,
    save_prompt_file,
)

BUILTIN_DOMAINS: tuple[str, ...] = ("thinking", "task", "action", "reflection", "debug", "memory")
_DATA = Path(__file__).parent / "data"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DomainError(ValueError):
    """A bad domain name or prompts file (one-line message)."""


def check_domain_name(name: str) -> str:
    """Domain names become folder names: refuse separators, '..' and anything odd."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise DomainError(
            f"domain: {name!r} is not a valid name; use letters, digits, '_', "
            "'-' or '.', starting with a letter or digit (no '/' or '..')"
        )
    return name


def _builtin(name: str) -> dict[str, Any]:
    data = json.loads((_DATA / f"{name}.json").read_text(encoding="utf-8"))
    return {
        "description": data["description"],
        "examples": list(data["train"]),
        "heldout": list(data["heldout"]),
    }


# A plain dict, as the original API's users expect (`.get`, `json.dumps`): six small files.
DOMAIN_PROMPTS: dict[str, dict[str, Any]] = {name: _builtin(name) for name in BUILTIN_DOMAINS}


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a file: one per line, or JSON lines with a 'prompt' field (the rule that
    tells them apart is in kd_core/domains/prompt_file.py)."""
    return open_prompt_file(path).prompts


def open_prompt_file(path: str | Path) -> PromptFile:
    """A prompts file with what it takes to write it back in its own format."""
    try:
        return read_prompt_file(path)
    except PromptFileError as e:
        raise DomainError(str(e)) from None


def write_prompt_file(pf: PromptFile, entries: list[PromptEntry]) -> PromptFile:
    """Save `entries` into pf's file in its format (prompt_file.save_prompt_file)."""
    try:
        return save_prompt_file(pf, entries)
    except PromptFileError as e:
        raise DomainError(str(e)) from None


def domain_from_file(path: str | Path) -> tuple[str, list[str]]:
    """A custom domain: its name is the file's stem."""
    p = Path(path)
    return check_domain_name(p.stem), read_prompts_file(p)


def planned_domains(
    names: list[str], domain_files: list[str] | None = None, data: str | None = None
) -> list[str]:
    """The domains a run trains, in order, by name, reading no file: the names asked, else
    the domain files' (their stems), else every built-in; then the data's domain (`data`,
    kd_core/data_files), which alone is distilled when nothing else is named. The one rule:
    `resolve_domains`, `kd distill` and the dashboard's panes all ask here."""
    if names:
        base = list(names)
    elif domain_files:
        base = list(dict.fromkeys(Path(f).expanduser().stem for f in domain_files))
    else:
        base = [] if data else list(BUILTIN_DOMAINS)
    return base + ([domain_name(data)] if data else [])


def resolve_domains(
    names: list[str], domain_files: list[str] | None = None
) -> dict[str, list[str]]:
    """Ordered {domain: training prompts} for the names asked (all built-ins if none)."""
    custom: dict[str, list[str]] = {}
    source: dict[str, Path] = {}
    for f in domain_files or []:
        name, prompts = domain_from_file(f)
        p = Path(f).expanduser()
        if name in source:
            if source[name].resolve() == p.resolve():
                continue  # the same file named twice
            raise DomainError(
                f"domain_files: {source[name]} and {p} both make a domain named {name!r}; "
                "rename one of them"
            )
        custom[name], source[name] = prompts, p
    wanted = planned_domains(names, domain_files)
    out: dict[str, list[str]] = {}
    for name in wanted:
        check_domain_name(name)
        if name in custom:
            out[name] = custom[name]
        elif name in BUILTIN_DOMAINS:
            out[name] = DOMAIN_PROMPTS[name]["examples"]
        else:
            known = ", ".join(list(BUILTIN_DOMAINS) + list(custom))
            raise DomainError(
                f"domain: unknown domain {name!r}; known: {known} (or add one "
                "with --domain-file PATH)"
            )
        if not out[name]:
            raise DomainError(f"domain: {name!r} has no prompts")
    return out
