"""Who may reach a kd server, and the sockets it listens on: one rule for `kd serve-teacher`
and `kd-tui --serve` (kd_tui/serve.py). No MLX here.

- Loopback (127.0.0.1, ::1, localhost) may go without a token; any other address needs one.
- A token is 16 or more printable characters with no white space: a blank or short one
  would let a client in without knowing it. Tokens are compared as bytes, in constant time.
- Sockets are bound here, not by aiohttp, so a bad host, a port in use or a port that is no
  number is one line naming the flag, before any model work or any page is served.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import socket
from typing import Any

MIN_TOKEN_CHARS = 16  # 16 characters of even one case of letters is over 75 bits


class ServeError(ValueError):
    """A server setting it cannot start with (one line naming the flag; exit status 2)."""


def is_local(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine (loopback only)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> None:
    """Refuse a token that a client could match without knowing it (ServeError)."""
    if not token.strip():
        raise ServeError(
            f"--token: empty or blank; give {MIN_TOKEN_CHARS} or more characters, or leave "
            "--token out to have one generated"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ServeError(
            "--token: no whitespace or control characters; letters, digits and punctuation only"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(
            f"--token: {len(token)} characters is too short to be safe; give "
            f"{MIN_TOKEN_CHARS} or more, or leave --token out to have one generated"
        )


def require_token(token: str | None, host: str) -> None:
    """The rule for a server about to listen on `host` with `token` (None: no token)."""
    if token is not None:
        check_token(token)
    elif not is_local(host):
        raise ServeError(f"--token: required to serve on {host} (a non-loopback address)")


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison. On bytes: compare_digest refuses str with non-ASCII
    characters (a TypeError, so a 500 instead of a 403), and a request may hold anything."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
    )


def check_port(port: Any) -> int:
    """A port from a flag or a caller: a whole number from 0 (any free one) to 65535."""
    if isinstance(port, str):
        port = int(port) if port.strip().isdigit() else port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"--port: expected a whole number from 0 to 65535, got {port!r}")
    return port


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names, all on one port (the one the
    system picked when `port` is 0), non-blocking, ready for aiohttp's SockSite."""
    port = check_port(port)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as e:
        why = getattr(e, "strerror", None) or e.__class__.__name__
        raise ServeError(f"--host: cannot resolve {host!r} ({why})") from None
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            if socks:  # the others share the first one's port (port 0 picked it)
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock = _bound(family, kind, proto, addr)
            if sock is not None:
                socks.append(sock)
    except OSError as e:
        for sock in socks:
            sock.close()
        where = f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise ServeError(
                f"--port: {where} is in use; pick another --port (0: any free one)"
            ) from None
        raise ServeError(f"--host: cannot listen on {where} ({e.strerror or e})") from None
    if not socks:
        raise ServeError(f"--host: cannot listen on {host}:{port} (no usable address)")
    return socks


def _bound(family: int, kind: int, proto: int, addr: tuple[Any, ...]) -> socket.socket | None:
    """A socket bound to `addr` and listening; None when the address family is not enabled
    here (EADDRNOTAVAIL: e.g. ::1 for localhost without IPv6), as asyncio does."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        if family == socket.AF_INET6:
            # "::" would otherwise take IPv4 too, and 0.0.0.0 on the same port then fails.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            return None
        raise
    sock.setblocking(False)
    return sock
