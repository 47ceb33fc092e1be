"""Reading a data file with a size bound (issue 27: /dev/zero or a huge file is refused with
one line, never read forever), through kd_core's shared bounded reader."""

from __future__ import annotations

from pathlib import Path

from kd_core.data_files.errors import DataFileError
from kd_core.files.bounded_read import GIB, BoundedReadError, read_bounded

# Large enough for real fine-tuning sets (a million chat rows of ~1 kB), small enough that a
# wrong path fails in seconds instead of filling the memory.
MAX_DATA_FILE_BYTES = 1 * GIB


def read_text_bounded(path: Path, max_bytes: int = MAX_DATA_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` bytes (a leading byte-order mark
    dropped). Anything else is a one-line DataFileError naming the file (and the bound)."""
    try:
        raw = read_bounded(path, max_bytes, "a data file")
    except BoundedReadError as e:
        raise DataFileError(f"data: {e}") from None
    except FileNotFoundError:
        raise DataFileError(f"data: {path} does not exist") from None
    except OSError as e:
        raise DataFileError(
            f"data: cannot read {path} ({e.strerror or type(e).__name__})"
        ) from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataFileError(f"data: {path} is not UTF-8 text (byte {e.start})") from None
