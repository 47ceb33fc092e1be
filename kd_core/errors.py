"""One-line error text: every refusal a user sees is a single line (docs/ARCHITECTURE.md)."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


class NoExamplesError(ValueError):
    """No example of a domain fits (one-line message with the counts)."""


class TeacherGone(RuntimeError):
    """A remote teacher went away (or changed model) mid-run. The run stopped after its last
    finished step with a checkpoint; `kd distill --resume` continues there once it is back."""
