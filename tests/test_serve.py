"""`kd-tui --serve`: the dashboard in a browser (textual-serve) behind a token off localhost.

- the token check: N requests without the token (or with a wrong one) to every route get 403
  and start no dashboard process; one with it starts one;
- a real browser (Debian's chromium, driven by Playwright's Python package, headless):
  the page loads, the Models tab shows, `t` starts a run whose steps reach the Train pane,
  and closing the page leaves the run going.

Every request goes to 127.0.0.1 only (the page's requests elsewhere are aborted). When the
browser or the Python packages are missing the tests are skipped with the reason (pytest
prints it: `-ra`); .ci/run installs both.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from kd_core.remote.access import is_local
from kd_core.run.record import is_live, run_dir
from kd_core.run.status import read_state

STARTUP_S = 60.0
RUN_TIMEOUT = 120.0
ITERS = 777_777  # a number that appears on screen only as the run's step count
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-_]")


def test_only_loopback_counts_as_local() -> None:
    assert is_local("localhost") and is_local("127.0.0.1") and is_local("::1")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.5") and not is_local("myhost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (textual-serve starts each dashboard through a shell)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


SERVING = re.compile(r"serving the dashboard on http://(\S+?):(\d+)/(?:\?token=(\S+))?")


def _serve_cmd(tmp_path: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "kd_tui", "--serve", *extra]
    return cmd + ["--config", str(tmp_path / "kd.toml")]


@contextlib.contextmanager
def _server(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """A server on a port the system picks (`--port 0`): the port is read from the URL it
    prints, the token (percent-decoded) too."""
    pytest.importorskip("textual_serve", reason="textual-serve is not installed")
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        cmd = _serve_cmd(tmp_path, "--port", "0", *extra)
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not (m := SERVING.search(log.read_text())) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert m, f"the server did not start: {log.read_text()}"
        port = int(m.group(2))
        assert port > 0, "the printed URL names the port the system picked"
        with socket.create_connection(("127.0.0.1", port), 10):
            pass  # it listens before it prints
        yield proc, port, unquote(m.group(3) or "")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _request(port: int, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_off_localhost_every_request_needs_the_token(tmp_path: Path) -> None:
    with _server(tmp_path, "--host", "0.0.0.0") as (proc, port, token):
        assert len(token) >= 20, "a token is generated and printed"
        attempts = 0
        for path in ("/", "/ws", "/ws?width=80&height=24", "/static/js/textual.js", "/x"):
            for headers in (
                {},
                {"Cookie": "kd_token=wrong"},
                {"Authorization": "Bearer wrong"},
                {**WS_HEADERS},
                {**WS_HEADERS, "Cookie": f"kd_token={token[:-1]}"},
            ):
                for query in ("", "?token=wrong", f"?token={token}x"):
                    sep = "&" if "?" in path and query else ""
                    full = path + (query.replace("?", sep, 1) if sep else query)
                    assert _request(port, full, headers) == 403, (full, headers)
                    attempts += 1
        assert attempts == 75
        assert _children(proc.pid) == [], "no dashboard process was started"
        # With the token: the page loads and sets the cookie its own requests carry.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/?token={token}")
        response = conn.getresponse()
        assert response.status == 200 and "kd_token=" in response.getheader("Set-Cookie", "")
        conn.close()
        status = _request(port, "/static/js/textual.js", {"Cookie": f"kd_token={token}"})
        assert status == 200
        # A websocket from another site's page is refused even with the cookie.
        evil = {**WS_HEADERS, "Cookie": f"kd_token={token}", "Origin": "http://evil.example"}
        assert _request(port, "/ws", evil) == 403
        assert _children(proc.pid) == []
        # The way the count is taken sees a dashboard start: a websocket with the token.
        good = {**WS_HEADERS, "Cookie": f"kd_token={token}"}
        assert _request(port, "/ws?width=80&height=24", good) == 101
        deadline = time.monotonic() + 10
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _children(proc.pid), "a websocket with the token starts a dashboard"


def _refused(tmp_path: Path, *extra: str) -> str:
    """What `kd-tui --serve` says when it refuses to start: one line on stderr, exit 2."""
    proc = subprocess.run(
        _serve_cmd(tmp_path, *extra), capture_output=True, text=True, timeout=STARTUP_S
    )
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kd-tui: "), proc.stderr
    return lines[0]


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("token", ["", " ", "\t\n", "fifteen-chars-x", "a b c d e f g h i"])
def test_a_blank_short_or_spaced_token_is_refused_before_anything_listens(
    tmp_path: Path, token: str
) -> None:
    """`--token ''` used to turn the check off: a request with no token matched it. Every
    route, the websocket included, is unreachable because nothing listens at all."""
    pytest.importorskip("textual_serve", reason="textual-serve is not installed")
    port = _free_port()
    for host in ("0.0.0.0", "localhost"):
        line = _refused(tmp_path, "--host", host, "--port", str(port), "--token", token)
        assert line.startswith("kd-tui: --token: ")
        assert "16 or more" in line or "no whitespace" in line
        for path in ("/", "/ws", "/ws?width=80&height=24", "/static/js/textual.js", "/x"):
            with pytest.raises(OSError):
                _request(port, path, WS_HEADERS if path.startswith("/ws") else {})
        assert _nothing_listens(port)


def test_the_token_middleware_refuses_an_empty_token() -> None:
    from kd_core.remote.access import ServeError
    from kd_tui.serve import token_middleware

    pytest.importorskip("aiohttp", reason="aiohttp is not installed")
    for token in ("", "   ", "short"):
        with pytest.raises(ServeError, match="--token"):
            token_middleware(token)


def test_a_given_token_is_percent_encoded_and_compared_as_bytes(tmp_path: Path) -> None:
    """`--port 0` prints the port it got; a token holding & # % + / ? = prints a URL that
    works when pasted; a non-ASCII token in a request is a 403, not a server error."""
    token = "p&q#r%s+t/u?v=w!x"
    with _server(tmp_path, "--host", "0.0.0.0", "--token", token) as (proc, port, printed):
        assert printed == token
        url = re.search(r"http://\S+", (tmp_path / "serve.log").read_text()).group(0)
        assert urlsplit(url).query == "token=p%26q%23r%25s%2Bt%2Fu%3Fv%3Dw%21x"
        assert _request(port, "/?" + urlsplit(url).query, {}) == 200
        for query in ("?token=%C3%A9", "?token=p%26q%23r%25s%2Bt%2Fu%3Fv%3Dw%21", ""):
            assert _request(port, "/" + query, {}) == 403, query
        assert _request(port, "/", {"Authorization": "Bearer \u00e9\u00e9"}) == 403
        assert _request(port, "/", {"Cookie": f"kd_token={quote(token)}x"}) == 403
        assert _children(proc.pid) == []


def test_start_up_errors_are_one_line(tmp_path: Path) -> None:
    """A bad port, an address that does not resolve and a port in use: one line, exit 2."""
    pytest.importorskip("textual_serve", reason="textual-serve is not installed")
    assert "from 0 to 65535, got -1" in _refused(tmp_path, "--port", "-1")
    assert "from 0 to 65535, got 99999" in _refused(tmp_path, "--port", "99999")
    line = _refused(tmp_path, "--host", "no-such-host.invalid", "--port", "0")
    assert line.startswith("kd-tui: --host: cannot resolve 'no-such-host.invalid'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _refused(tmp_path, "--host", "127.0.0.1", "--port", str(port))
    assert (
        line == f"kd-tui: --port: 127.0.0.1:{port} is in use; pick another --port (0: any free one)"
    )


# ---- a real browser -----------------------------------------------------------------------------
def _browser() -> tuple[object, str]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return sync_api, chromium


def _write_config(tmp_path: Path, tiny_pair) -> Path:
    prompts = tmp_path / "quick.txt"
    prompts.write_text("Name a colour.\nCount to three.\nSay hello.\nPick a number.\n")
    out = tmp_path / "out"
    (tmp_path / "kd.toml").write_text(
        f'teacher = "{tiny_pair.teacher}"\nstudent = "{tiny_pair.student}"\n'
        f'domain_files = ["{prompts}"]\nnum_iters = {ITERS}\nmax_tokens = 8\n'
        f'batch_size = 1\nsteps_per_save = 1000000\noutput = "{out}"\n'
    )
    return out


class _Screen:
    """What the dashboard sent the page's terminal, as text (escape sequences removed)."""

    def __init__(self) -> None:
        self.raw = bytearray()

    def frame(self, payload: bytes | str) -> None:
        self.raw += payload if isinstance(payload, bytes) else payload.encode()

    @property
    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.raw)).decode("utf-8", errors="replace")


def _wait(page, cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_dashboard_in_a_real_browser(tiny_pair, tmp_path: Path) -> None:
    sync_api, chromium = _browser()
    out = _write_config(tmp_path, tiny_pair)
    with _server(tmp_path) as (proc, port, token), sync_api.sync_playwright() as pw:
        base = f"http://127.0.0.1:{port}"
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Nothing leaves the machine: any request not to our server is aborted.
            page.route(
                "**/*",
                lambda route: (
                    route.continue_() if route.request.url.startswith(base) else route.abort()
                ),
            )
            screen = _Screen()
            page.on("websocket", lambda ws: ws.on("framereceived", screen.frame))
            page.goto(base + "/")
            _wait(page, lambda: "Models" in screen.text and "Teacher" in screen.text, 60, "Models")
            page.focus(".xterm-helper-textarea")
            page.keyboard.press("t")
            step = re.compile(rf"\b([1-9][0-9]*)/{ITERS}\b")
            _wait(page, lambda: step.search(screen.text), RUN_TIMEOUT, "a step in the Train pane")
            if shots := os.environ.get("KD_BROWSER_SHOTS"):  # to look at what the page showed
                page.wait_for_timeout(1500)
                page.screenshot(path=str(Path(shots) / "kd-serve-train.png"))
            page.close()
        finally:
            browser.close()
        state = read_state(out)
        assert state is not None and state.live
        seen = state.last_step["step"]
        deadline = time.monotonic() + RUN_TIMEOUT
        while read_state(out).last_step["step"] <= seen and time.monotonic() < deadline:
            time.sleep(0.2)
        assert read_state(out).last_step["step"] > seen, "the run goes on without the page"
    with open(run_dir(out) / "control", "a") as fh:
        fh.write("stop\n")
    deadline = time.monotonic() + RUN_TIMEOUT
    while is_live(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_live(out):
        os.kill(state.record.pid, signal.SIGKILL)
    assert read_state(out).state == "stopped"
