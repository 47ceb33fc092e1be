"""A user's TOML file, read and edited without losing what they wrote.

kd.toml belongs to the user: their comments, key order, unknown keys and the way they wrote
the values nobody changed must survive a save. `edit_toml` changes only the keys whose value
changed (tomlkit keeps everything else byte for byte). Windows editors often save UTF-8 with
a byte-order mark, which tomllib refuses: it is taken off on reading and put back on writing,
and a file with CRLF line endings keeps them.

Errors propagate as OSError, UnicodeDecodeError, BoundedReadError (not a regular file, or
over CONFIG_MAX_BYTES), tomllib.TOMLDecodeError or tomlkit.exceptions.ParseError: the caller
words them (kd_core.config).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomlkit

from kd_core.files.bounded_read import CONFIG_MAX_BYTES, read_bounded

BOM = "\ufeff"


def read_toml_text(path: Path) -> str:
    """The file's text as written (line endings untouched), without a leading BOM."""
    data = read_bounded(path, CONFIG_MAX_BYTES, "a config file")
    return data.decode("utf-8").removeprefix(BOM)


def value_source(text: str, key: str) -> str | None:
    """How the top-level `key`'s value is written in `text` (e.g. '"3"' for `x = "3"`), on one
    line; None when the key is not there or tomlkit cannot read the text."""
    try:
        doc = tomlkit.parse(text.removeprefix(BOM))
    except Exception:  # tomlkit is stricter or looser than tomllib in corners: no source
        return None
    if key not in doc:
        return None
    item = doc.item(key)
    return " ".join(item.as_string().split())


def format_value(value: Any) -> str:
    """A value written as TOML writes it, on one line (for values found only after parsing)."""
    try:
        return " ".join(tomlkit.item(value).as_string().split())
    except Exception:
        return repr(value)


def same_value(a: Any, b: Any) -> bool:
    """Equal as TOML values: 2 and 2.0 are the same number, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def edit_toml(text: str, values: Mapping[str, Any], remove: Iterable[str] = ()) -> str:
    """`text` with top-level `values` set and the keys in `remove` taken out. A key whose
    value is already the same is left exactly as written (with its comment); a new key goes
    after the others, before any table. A BOM and CRLF line endings are kept."""
    bom = BOM if text.startswith(BOM) else ""
    body = text.removeprefix(bom)
    doc = tomlkit.parse(body)
    for key, value in values.items():
        if key in doc and same_value(doc[key].unwrap(), value):
            continue
        doc[key] = value
    for key in remove:
        if key in doc:
            del doc[key]
    out = tomlkit.dumps(doc)
    if "\r\n" in body and not re.search(r"(?<!\r)\n", body):
        out = re.sub(r"(?<!\r)\n", "\r\n", out)  # new lines in the file's own line ending
    return bom + out
