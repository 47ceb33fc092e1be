"""Atomic file writes: write a temporary file beside the target, fsync, rename.

A reader (or a run killed mid-write) never sees half a file: it sees the old one or the new.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temp_beside(path: Path, suffix: str = ".tmp") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are ordinary files
    return tmp


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _naming(path: Path, e: OSError) -> OSError:
    """The same error naming the user's file, not our hidden temporary one beside it (a
    message saying '.kd.toml.x8f2.tmp: Permission denied' sends the user looking for it)."""
    if e.errno is None:
        return e
    return type(e)(e.errno, e.strerror, str(path))


def _through_temp(path: Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """`write(tmp)` fills a temporary file beside `path`; it is fsynced and renamed over
    `path`, or removed if anything fails (an OSError then names `path`, not the temp file)."""
    path = Path(path)
    try:
        tmp = _temp_beside(path, suffix)
    except OSError as e:
        raise _naming(path, e) from None
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(path, e) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _through_temp(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def atomic_save_safetensors(
    path: Path, arrays: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """mx.save_safetensors through a temp file (its name must end in .safetensors)."""
    import mlx.core as mx  # not at the top: config and events use this module without MLX

    _through_temp(
        path,
        lambda tmp: mx.save_safetensors(tmp, arrays, metadata=metadata or {}),
        suffix=".safetensors",
    )
