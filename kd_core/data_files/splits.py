"""The held-out rows of a data source.

`valid.jsonl` is the held-out set when the folder has one. Otherwise a seeded 5% of the train
rows is held out, chosen by hashing (seed, the row's content): each row's draw depends on its
own text and the seed alone, so reordering the file, or editing other rows, moves no row across
the line except at the margin of the count. The rows with the smallest hashes are held out:
round(5% of N), at least 1 when N >= 2, and never every row. Rows with the same content share a
hash and are held out or trained together, so a duplicate never leaks a held-out row into
training; all rows alike hold nothing out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kd_core.data_files.formats import DataSource, Row, row_dict

HELD_OUT_FRACTION = 0.05


@dataclass(frozen=True)
class Split:
    train: tuple[Row, ...]
    held_out: tuple[Row, ...]
    # valid.jsonl, drawn from the train rows, or (`kd eval --data FILE`) the whole file
    held_out_from: Literal["valid", "seeded", "file"]
    held_out_path: Path | str  # the file the held-out rows (and their line numbers) are in
    held_out_lines: tuple[int, ...]  # their line numbers in that file (for kd_summary.json)


def row_hash(row: Row, seed: int) -> int:
    """A stable 64-bit draw for `row` under `seed`: its content in canonical JSON, hashed
    with SHA-256 (not Python's hash(), which changes per process)."""
    key = json.dumps(row_dict(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(f"kd-split\0{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def held_out_indices(
    rows: tuple[Row, ...], seed: int, fraction: float = HELD_OUT_FRACTION
) -> tuple[int, ...]:
    """Indices (ascending) of the rows drawn for holding out (see the module docstring)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    n = len(rows)
    want = 0 if n < 2 or fraction == 0 else max(1, round(n * fraction))
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row_hash(row, seed), []).append(i)
    chosen: list[int] = []
    for h in sorted(groups):
        if len(chosen) >= want:
            break
        if len(chosen) + len(groups[h]) >= n:
            continue  # taking this group would leave nothing to train on
        chosen += groups[h]
    return tuple(sorted(chosen))


def split_rows(source: DataSource, seed: int, fraction: float = HELD_OUT_FRACTION) -> Split:
    """Train and held-out rows of `source`: valid.jsonl's rows when present (all train rows
    then train), else a seeded draw from the train rows."""
    if source.valid is not None:
        rows = source.valid.rows
        lines = tuple(r.line for r in rows)
        return Split(source.train.rows, rows, "valid", source.valid.path, lines)
    rows = source.train.rows
    picked = set(held_out_indices(rows, seed, fraction))
    train = tuple(r for i, r in enumerate(rows) if i not in picked)
    held = tuple(r for i, r in enumerate(rows) if i in picked)
    return Split(train, held, "seeded", source.train.path, tuple(r.line for r in held))


def whole_file(source: DataSource) -> Split:
    """Every row of a single file as the set to score (`kd eval --data FILE`): the file a
    user hands to evaluation is what they want measured, not its seeded 5%."""
    rows = source.train.rows
    return Split(rows, rows, "file", source.train.path, tuple(r.line for r in rows))
