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
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import secrets
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

COOKIE = "kd_token"
TEMPLATES = Path(__file__).with_name("serve_templates")
Handler = Callable[[Any], Awaitable[Any]]


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

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> Any:
        if token is not None and not hmac.compare_digest(request_token(request), token):
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

    return KDServer(command, host=host, port=port, title="kd", templates_path=TEMPLATES)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        import textual_serve  # noqa: F401
    except ImportError:
        parser.error("--serve needs textual-serve (pip install textual-serve)")
    token = args.token
    if token is None and not is_local(args.host):
        token = secrets.token_urlsafe(24)
    url_host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    query = f"/?token={token}" if token else "/"
    print(f"kd-tui: serving the dashboard on http://{url_host}:{args.port}{query}", flush=True)
    if token:
        print("kd-tui: every request must carry this token; others get 403", flush=True)
    make_server(dashboard_command(args), args.host, args.port, token).serve()
    return 0
