"""Reading a user's file with a size bound: the one helper every reader of kd.toml, prompt
files and data files goes through.

`kd distill --config /dev/zero` used to read forever: a path may name a device, a pipe, a
folder or a file far bigger than any real one. Here the file is opened without blocking (a
FIFO would otherwise wait for a writer), checked on the opened descriptor (no window for a
swap between a check of the path and the read) to be a regular file no bigger than the
bound, and read at most one byte past the bound (a file that grew since is caught too).
A refusal is a one-line BoundedReadError naming the file and the bound; the caller puts its
field in front ("config: ...", "domain_files: ..."). A missing or unreadable file raises the
OSError as before: callers already word those.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
CONFIG_MAX_BYTES = 1 * MIB  # kd.toml holds settings: a few kB
RECORD_MAX_BYTES = 1 * MIB  # .kd-run/run.json: under 1 kB as kd writes it
# A prompt set of a million prompts of ~200 characters; the dashboard holds one in memory.
PROMPT_FILE_MAX_BYTES = 256 * MIB


class BoundedReadError(ValueError):
    """Not a regular file, or over the bound (one line naming the file and the bound)."""


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((word for test, word in kinds if test(mode)), "a special file")


def read_bounded(path: str | os.PathLike[str], max_bytes: int, what: str = "this file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` bytes; BoundedReadError when it
    is anything else (`what` names the kind of file in the message: "a config file")."""
    p = Path(path)
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BoundedReadError(f"{p} is {_kind(st.st_mode)}, not a regular file")
        limit = f"the {human_bytes(max_bytes)} limit for {what}"
        if st.st_size > max_bytes:
            size = human_bytes(st.st_size)
            if size == human_bytes(max_bytes):  # "1 MiB, over the 1 MiB limit" says nothing
                size = f"{st.st_size:,} bytes"
            raise BoundedReadError(f"{p} is {size}, over {limit}")
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:  # os.read may return less than asked: read to the end
            chunk = os.read(fd, max_bytes + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > max_bytes:
        raise BoundedReadError(f"{p} is over {limit}")
    return b"".join(chunks)
