"""The one error type of kd_core.data_files."""

from __future__ import annotations


class DataFileError(ValueError):
    """A data file, row or rendering that cannot be used. The message is one line naming the
    file (and the line number when a row is at fault) and what was expected."""
