"""kd.toml as a file: read (`load_toml`; `load_toml_partial` keeps the good settings of a file
with a bad one, for the dashboard), and written (`save_toml`: the user's file edited in place,
comments and order kept; a new one made whole, temp file + rename).

What the keys mean and how each is checked is kd_core/config.py (KDConfig, RunSpec,
spec_from_mapping). Every error is one line naming the key (ConfigError).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from kd_core.config import CONFIG_FIELDS, RUN_KEYS, ConfigError, RunSpec, spec_from_mapping
from kd_core.errors import one_line
from kd_core.files.atomic import atomic_write_bytes
from kd_core.files.bounded_read import CONFIG_MAX_BYTES, BoundedReadError, read_bounded
from kd_core.files.toml_file import (
    BOM,
    edit_toml,
    format_value,
    read_toml_text,
    same_value,
    value_source,
)


def _read_config(p: Path) -> tuple[str, dict[str, Any]]:
    """kd.toml's text (without a BOM) and its mapping; a one-line ConfigError if unreadable."""
    try:
        text = read_toml_text(p)
    except FileNotFoundError:
        raise ConfigError(f"config: {p} does not exist") from None
    except BoundedReadError as e:
        raise ConfigError(f"config: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: cannot read {p} ({e.__class__.__name__})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {p} is not valid TOML ({e})") from None
    return text, data


def load_toml(path: str | os.PathLike[str], base: RunSpec | None = None) -> RunSpec:
    """Read kd.toml. Errors are one-line ConfigErrors naming the file and the field."""
    p = Path(path)
    _, data = _read_config(p)
    try:
        return spec_from_mapping(data, base, where=str(p))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


@dataclass
class BadSetting:
    """A key of kd.toml that could not be used. The file keeps it; the user is shown it."""

    key: str
    source: str  # the value as the file writes it, e.g. '"3"' for `temperature = "3"`
    error: str  # one line naming the key and what is allowed


def load_toml_partial(
    path: str | os.PathLike[str], base: RunSpec | None = None
) -> tuple[RunSpec, list[BadSetting]]:
    """Read kd.toml keeping every good value: a bad or unknown key is reported, not fatal
    (the dashboard shows it to be fixed instead of dropping the whole file). A file that
    cannot be read or is not TOML at all still raises ConfigError."""
    p = Path(path)
    text, data = _read_config(p)
    spec = base or RunSpec()
    bad: list[BadSetting] = []
    for key, value in data.items():
        try:
            spec = spec_from_mapping({key: value}, spec, where=str(p))
        except ConfigError as e:
            source = value_source(text, key) or format_value(value)
            bad.append(BadSetting(key, source, str(e)))
    return spec, bad


def spec_to_mapping(spec: RunSpec) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if spec.teacher:
        data["teacher"] = spec.teacher
    if spec.student:
        data["student"] = spec.student
    if spec.domains:
        data["domains"] = list(spec.domains)
    if spec.domain_files:
        data["domain_files"] = list(spec.domain_files)
    if spec.data:
        data["data"] = spec.data
    if spec.teacher_tokenizer:
        data["teacher_tokenizer"] = spec.teacher_tokenizer
    data.update(spec.config.to_dict())
    for key in RUN_KEYS[-2:]:  # the template tables: after every top-level key
        if getattr(spec, key):
            data[key] = dict(getattr(spec, key))
    return data


def save_toml(
    spec: RunSpec,
    path: str | os.PathLike[str],
    *,
    keep: Iterable[str] = (),
    backup: bool = False,
) -> Path:
    """Write kd.toml atomically (temp file + rename): a reader never sees half a file.

    An existing file is edited in place: comments, key order, unknown keys and the values
    that did not change stay as written, and a setting at its default that the file does not
    name is not added. A run key (teacher, domains, ...) the spec no longer has is removed
    unless it is in `keep` (a value the caller could not read is never lost). A file that
    cannot be read or is not TOML is not written over (ConfigError). With `backup` the
    previous version is kept as <name>.bak. Nothing is written when nothing changed.
    """
    p = Path(path)
    mapping = spec_to_mapping(spec)
    if p.is_dir():
        raise ConfigError(f"config: {p} is a folder; name a file, e.g. {p / 'kd.toml'}")
    try:
        old: bytes | None = read_bounded(p, CONFIG_MAX_BYTES, "a config file")
    except (FileNotFoundError, NotADirectoryError):
        old = None  # a new file (a path that cannot be one fails, named, on writing)
    except BoundedReadError as e:
        raise ConfigError(f"config: {e}; not saved over it") from None
    except OSError as e:
        why = e.strerror or e.__class__.__name__
        raise ConfigError(f"config: cannot read {p} ({why}); not saved over it") from None
    if old is None:
        _write_config(p, tomli_w.dumps(mapping).encode("utf-8"))
        return p
    try:
        text = old.decode("utf-8")
        data = tomllib.loads(text.removeprefix(BOM))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else f"not valid TOML: {e}"
        raise ConfigError(f"config: {p} is {why}; not saved over it (fix it first)") from None
    values = {
        k: v
        for k, v in mapping.items()
        if k in data or k not in CONFIG_FIELDS or not same_value(v, CONFIG_FIELDS[k].default)
    }
    keep = set(keep)
    remove = [k for k in RUN_KEYS if k in data and k not in mapping and k not in keep]
    remove = [k for k in remove if data[k] != []]  # `domains = []` says what no key says
    try:
        new = edit_toml(text, values, remove)
    except Exception as e:  # tomlkit refused what tomllib read: do not guess
        raise ConfigError(
            f"config: cannot edit {p} in place ({one_line(e)}); not saved over it"
        ) from None
    if new == text:
        return p
    if backup:
        _write_config(p.with_name(p.name + ".bak"), old)
    _write_config(p, new.encode("utf-8"))
    return p


def _write_config(p: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(p, data)
    except OSError as e:
        why = e.strerror or e.__class__.__name__
        raise ConfigError(f"config: cannot write {p} ({why})") from None
