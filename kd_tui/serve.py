"""`kd-tui --serve`: the dashboard in a browser, through textual-serve.

Each browser tab's websocket starts its own dashboard process (textual-serve's AppService);
runs are detached processes that own their output folders, so closing a tab stops nothing
and any number of tabs can follow the same run.

textual-serve has no access control. Bound to localhost (the default) the pages are open to
this machine's users only; any other address requires a token, generated and printed unless
`--token` gives one. A middleware in front of every route checks it before the route runs,
so a request without it gets 403 and never starts a dashboard process. The token may come
as `?token=` (the printed URL), as the cookie that the first good page answer sets (the
page's scripts, styles and websocket send it back: the websocket URL cannot carry a query of
ours, the page's script appends its own), or as `Authorization: Bearer`. Whatever the
address, a websocket whose Origin is another site is refused: otherwise any web page open in
the user's browser could drive a localhost dashboard (cross-site websocket hijacking).

A token given with `--token` must be guess-proof: 16 or more characters, none of them
whitespace or control characters; an empty or blank one would otherwise turn the check off
(`''` matches a request carrying nothing). It is refused with one line (exit 2), as are a
port out of range, an address that does not resolve and a port in use, before anything
listens. The server binds its sockets itself, so `--port 0` prints the port it got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

COOKIE = "kd_token"
TEMPLATES = Path(__file__).with_name("serve_templates")
Handler = Callable[[Any], Awaitable[Any]]
MIN_TOKEN_CHARS = 16  # 16 characters of even one case of letters is over 75 bits


class ServeError(ValueError):
    """A setting `--serve` cannot start with (one line; kd-tui exits 2)."""


def is_local(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine (loopback only)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_command(args: argparse.Namespace) -> str:
    """The command each tab's process runs: this dashboard, with the server's settings."""
    cmd = [sys.executable, "-m", "kd_tui", "--config", str(Path(args.config).absolute())]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    if args.attach:
        cmd += ["--attach", str(Path(args.attach).absolute())]
    return shlex.join(cmd)


def check_token(token: str) -> None:
    """Refuse a token that a client could match without knowing it (ServeError)."""
    if not token.strip():
        raise ServeError(
            f"--token: empty or blank; give {MIN_TOKEN_CHARS} or more characters, or leave --token "
            "out to have one generated"
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


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison. On bytes: compare_digest refuses str with non-ASCII
    characters (a TypeError, so a 500 instead of a 403), and a query may hold anything."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
    )


def request_token(request: Any) -> str:
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return request.query.get("token") or request.cookies.get(COOKIE) or bearer


def same_origin(request: Any) -> bool:
    """A browser's websocket says where its page came from; it must be this server."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (a browser always sends Origin on a websocket)
    return urlsplit(origin).netloc == request.host


def token_middleware(token: str | None) -> Any:
    from aiohttp import web

    if token is not None:
        check_token(token)  # an empty token would let every request through

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> Any:
        if token is not None and not token_matches(request_token(request), token):
            raise web.HTTPForbidden(text="kd: this dashboard needs its token (?token=...)\n")
        if request.path == "/ws" and not same_origin(request):
            raise web.HTTPForbidden(text="kd: websocket from another origin refused\n")
        response = await handler(request)
        if token is not None and request.query.get("token") and not response.prepared:
            # The page's own requests (scripts, the websocket) carry the token as a cookie.
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return check


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names, all on one port (the one the
    system picked when `port` is 0). Bound here, not by aiohttp: a bad address or a port in
    use is then one line, and the real port is known before the URL is printed."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port: expected a whole number from 0 to 65535, got {port}")
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


def make_server(command: str, host: str, port: int, token: str | None) -> Any:
    """A textual-serve Server with the token check in front of every route."""
    from aiohttp import web
    from textual_serve.server import Server

    class KDServer(Server):  # type: ignore[misc]
        async def _make_app(self) -> Any:
            app = await super()._make_app()
            app.middlewares.append(token_middleware(token))  # before the app is frozen
            return app

        async def handle_index(self, request: Any) -> Any:
            # The page's links and websocket URL must name the address the browser used,
            # not the bound one (0.0.0.0 is no address to connect to).
            self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

        def serve_on(self, socks: list[socket.socket]) -> None:
            """Server.serve, on sockets bound already (it would bind host and port)."""
            self.initialize_logging()
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signal.SIGINT, self.request_exit)
                loop.add_signal_handler(signal.SIGTERM, self.request_exit)
            web.run_app(
                self._make_app(),
                sock=socks,
                handle_signals=False,
                loop=loop,
                print=lambda *args: None,
            )

    return KDServer(command, host=host, port=port, title="kd", templates_path=TEMPLATES)


def page_url(host: str, port: int, token: str | None) -> str:
    """The URL to open: a wildcard address names this machine; a token is percent-encoded
    (it may hold & # % + and the like)."""
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    query = f"/?token={quote(token, safe='')}" if token is not None else "/"
    return f"http://{host}:{port}{query}"


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        import textual_serve  # noqa: F401
    except ImportError:
        parser.error("--serve needs textual-serve (pip install textual-serve)")
    token = args.token
    try:
        if token is not None:
            check_token(token)
        elif not is_local(args.host):
            token = secrets.token_urlsafe(24)
        socks = bind_sockets(args.host, args.port)
    except ServeError as e:
        print(f"kd-tui: {e}", file=sys.stderr)
        return 2
    port = socks[0].getsockname()[1]
    url = page_url(args.host, port, token)
    print(f"kd-tui: serving the dashboard on {url}", flush=True)
    if token:
        print("kd-tui: every request must carry this token; others get 403", flush=True)
    make_server(dashboard_command(args), args.host, port, token).serve_on(socks)
    return 0
