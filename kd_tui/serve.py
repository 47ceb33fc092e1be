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
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kd_core.remote.access import (
    ServeError,
    bind_sockets,
    check_token,
    is_local,
    token_matches,
)

COOKIE = "kd_token"
TEMPLATES = Path(__file__).with_name("serve_templates")
Handler = Callable[[Any], Awaitable[Any]]


def dashboard_command(args: argparse.Namespace) -> str:
    """The command each tab's process runs: this dashboard, with the server's settings."""
    cmd = [sys.executable, "-m", "kd_tui", "--config", str(Path(args.config).absolute())]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    if args.attach:
        cmd += ["--attach", str(Path(args.attach).absolute())]
    return shlex.join(cmd)


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
