"""Reading a user's file with a size bound (issue 27: /dev/zero or a huge file must be refused
with one line, never read forever).

A local helper: kd_core has no shared bounded reader yet. When one lands (issue 27), this
module should become a thin call to it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kd_core.data_files.errors import DataFileError

# Large enough for real fine-tuning sets (a million chat rows of ~1 kB), small enough that a
# wrong path fails in seconds instead of filling the memory.
MAX_DATA_FILE_BYTES = 1 << 30


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def read_text_bounded(path: Path, max_bytes: int = MAX_DATA_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` bytes (a leading byte-order mark
    dropped). Anything else is a one-line DataFileError naming the file (and the bound)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataFileError(f"data: {path} does not exist") from None
    except OSError as e:
        raise DataFileError(
            f"data: cannot open {path} ({e.strerror or type(e).__name__})"
        ) from None
    try:
        # Checked on the opened file, not the path: no window for a swap in between.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataFileError(f"data: {path} is not a regular file")
        if st.st_size > max_bytes:
            raise DataFileError(
                f"data: {path} is {_human(st.st_size)}, over the {_human(max_bytes)} limit "
                "for a data file"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(max_bytes + 1)  # + 1: a file that grew since fstat is still caught
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise DataFileError(f"data: {path} is over the {_human(max_bytes)} limit for a data file")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataFileError(f"data: {path} is not UTF-8 text (byte {e.start})") from None
