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

import pytest

from kd_core.run_record import is_live, run_dir
from kd_core.run_status import read_state
from kd_tui.serve import is_local

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


@contextlib.contextmanager
def _server(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    pytest.importorskip("textual_serve", reason="textual-serve is not installed")
    port = _free_port()
    cmd = [sys.executable, "-m", "kd_tui", "--serve", "--port", str(port), *extra]
    cmd += ["--config", str(tmp_path / "kd.toml")]
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        else:
            raise AssertionError(f"the server did not start: {log.read_text()}")
        printed = log.read_text()
        token = m.group(1) if (m := re.search(r"\?token=(\S+)", printed)) else ""
        yield proc, port, token
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
