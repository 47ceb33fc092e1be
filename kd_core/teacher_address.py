"""A teacher named by a server's address (`teacher = "http://host:port"`) rather than a model,
and the one rule for its token. Plain text checks, no imports of kd: kd_core.config reads
kd.toml with them and kd_core/remote/connect.py connects with them."""

from __future__ import annotations

from urllib.parse import urlsplit

URL_SCHEMES = ("http://", "https://")
TOKEN_ENV = "KD_TEACHER_TOKEN"
TOKEN_IN_FILE = (
    "teacher_token: a token is not kept in kd.toml (the run copies its settings into the run "
    f"folder); set the environment variable {TOKEN_ENV} or pass --teacher-token"
)


def is_remote(name: str | None) -> bool:
    """Whether a teacher name is a server's address rather than a model."""
    return isinstance(name, str) and name.strip().lower().startswith(URL_SCHEMES)


def address_error(value: str | None) -> str | None:
    """One line when `value` is an address without a host (or with a port that is not a
    number); None for a good address and for anything else (a model name, checked when it is
    resolved)."""
    if not is_remote(value):
        return None
    try:
        parts = urlsplit(str(value).strip())
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or not parts.hostname:
        return f"teacher: {value!r} is not a server address; write it as http://host:port"
    return None


TOKEN_FLAG = "--teacher-token"


def without_token(argv: list[str]) -> list[str]:
    """A command line as a run records it (run.json's argv, the --resume command): the value
    of --teacher-token replaced, so the secret is not written into the run folder."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg == TOKEN_FLAG:
            out.append(arg)
            hide = True
        elif arg.startswith(TOKEN_FLAG + "="):
            out.append(TOKEN_FLAG + "=***")
        else:
            out.append(arg)
    return out
