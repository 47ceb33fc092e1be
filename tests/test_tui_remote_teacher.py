"""Models pane with a remote teacher (`kd serve-teacher` on 127.0.0.1): the facts the server
reports, its tokenizer compared like a local one, and a server that does not answer never
holding up the screen (the check runs in a thread worker with timeouts)."""

from __future__ import annotations

import socket
import threading
import time
from functools import partial

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, Static
from tui_support import text, wait_until

from kd_core.remote.server import TeacherServer
from kd_tui.messages import StateChanged
from kd_tui.panes.models import ModelsPane
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio
wait_for = partial(wait_until, timeout=30.0)


class _Host(App):
    def __init__(self) -> None:
        super().__init__()
        self.state = AppState()
        self.changes: list[str] = []

    def compose(self) -> ComposeResult:
        yield ModelsPane()

    def on_state_changed(self, message: StateChanged) -> None:
        self.changes.append(message.what)


async def enter(pilot, app: App, selector: str, value: str) -> None:
    box = app.query_one(selector, Input)
    box.focus()
    box.value = value
    await pilot.press("enter")


async def test_a_remote_teacher_shows_what_the_server_reports(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DEMO_DIR", str(tmp_path / "no-demo"))
    monkeypatch.setattr("kd_core.demo.shipped_pair", lambda recipe=None: None)
    srv = TeacherServer(str(tiny_pair.teacher), port=0).start()
    try:
        app = _Host()
        async with app.run_test(size=(120, 40)) as pilot:
            await enter(pilot, app, "#teacher-input", srv.url)
            await wait_for(pilot, lambda: "remote teacher" in text(app, "#teacher-info"))
            info = text(app, "#teacher-info")
            assert str(tiny_pair.teacher) in info and f"{srv.url} (kd)" in info
            assert "384" in info and " ms" in info
            assert app.state.spec.teacher == srv.url
            await enter(pilot, app, "#student-input", str(tiny_pair.student))
            # The tokenizer the server sent is compared with the student's, as a local one.
            await wait_for(pilot, lambda: "agree" in text(app, "#models-verdict"))
    finally:
        srv.stop()


async def test_a_server_that_does_not_answer_never_freezes_the_pane(tiny_pair, tmp_path):
    """A socket that accepts and never replies: while the teacher's check waits on it, the
    student is picked and checked; once it goes away the teacher box says so in one line."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    app = _Host()
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await enter(pilot, app, "#teacher-input", url)
            await wait_for(pilot, lambda: "checking" in text(app, "#teacher-info"))
            t0 = time.monotonic()
            await enter(pilot, app, "#student-input", str(tiny_pair.student))
            await wait_for(pilot, lambda: "llama" in text(app, "#student-info"))
            assert time.monotonic() - t0 < 5  # the screen answered while the teacher waited
            assert "checking" in text(app, "#teacher-info") and app.state.spec.teacher != url
            stop.set()
            for conn in held:
                conn.close()
            listener.close()
            err = app.query_one("#teacher-error", Static)
            await wait_for(pilot, lambda: "kd teacher at 127.0.0.1" in str(err.render()))
            assert "\n" not in str(err.render()) and app.state.spec.teacher != url
    finally:
        stop.set()
        listener.close()
