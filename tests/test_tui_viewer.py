"""Viewer pane with the real child-process worker on the tiny pair and a real (3-step) adapter:
three answers stream side by side, then the token inspector shows top-k at a position."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.widgets import Input, Static
from tui_support import wait_until

from kd_core.config import KDConfig, RunSpec
from kd_tui.messages import RunCompleted
from kd_tui.panes.viewer import AnswerBox, TokenInspector, ViewerPane, bar, find_adapter
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def trained(tiny_pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the CLI: <output>/thinking/adapters.safetensors (3 steps, seconds)."""
    root = tmp_path_factory.mktemp("viewer_run")
    out = root / "adapters_kd"
    env = {
        **os.environ,
        "KD_CACHE_DIR": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kd_core",
            "distill",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.student),
            "--domain",
            "thinking",
            "--iters",
            "3",
            "--max-tokens",
            "8",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "thinking" / "adapters.safetensors").is_file()
    return out


class _Host(App):
    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state

    def compose(self) -> ComposeResult:
        yield ViewerPane()


def plain(renderable, width: int = 150) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


wait_for = partial(wait_until, timeout=60.0)


def test_bar_and_find_adapter(tmp_path: Path) -> None:
    assert bar(0.0) == "" and bar(1.0) == "█" * 8 and bar(0.5) == "████"
    assert bar(1 / 64) == "▏"
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "adapters.safetensors").write_bytes(b"x")
    assert find_adapter(tmp_path, "thinking") == tmp_path / "task"  # falls back to any domain
    assert find_adapter(tmp_path / "none", "thinking") is None


async def test_viewer_three_answers_and_inspector(tiny_pair, trained: Path) -> None:
    state = AppState(
        spec=RunSpec(
            teacher=str(tiny_pair.teacher),
            student=str(tiny_pair.student),
            domains=["thinking"],
            config=KDConfig(output=str(trained), max_tokens=8),
        )
    )
    app = _Host(state)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ViewerPane)
        # the adapter defaults to <output>/<first domain>
        assert app.query_one("#view-adapter", Input).value == str(trained / "thinking")
        assert "thinking" in str(app.query_one("#ans-adapted", AnswerBox).border_title)

        # an empty prompt takes a held-out prompt of the run's first domain
        app.query_one("#view-prompt", Input).focus()
        await pilot.press("enter")
        assert app.query_one("#view-prompt", Input).value
        # every column streams (tokens arrive before the run finishes) ...
        await wait_for(
            pilot, lambda: all(pane.answers[s].tokens for s in ("teacher", "student", "adapted"))
        )
        # ... then the inspector fills in for the teacher's answer
        inspector = app.query_one(TokenInspector)
        await wait_for(pilot, lambda: bool(inspector.positions))
        for s in ("teacher", "student", "adapted"):
            a = pane.answers[s]
            assert a.error is None and a.done in ("stop", "length") and 1 <= len(a.tokens) <= 8
            shown = str(app.query_one(f"#ans-{s}-text", Static).render())
            assert a.pieces[0].strip()[:1] in shown
        assert len(inspector.positions) == len(pane.answers["teacher"].tokens)

        # move along the teacher's answer with the keyboard
        inspector.focus()
        await pilot.press("right")
        assert inspector.position == 1 or len(inspector.positions) == 1
        await pilot.press("end")
        assert inspector.position == len(inspector.positions) - 1
        await pilot.press("home")
        assert inspector.position == 0
        text = plain(inspector.render())
        assert "Teacher" in text and "Student (base)" in text and "Student + adapter" in text
        assert "KL(teacher‖·)" in text and "top-1" in text
        n = len(inspector.positions)
        assert "mean KL" in text and f"/{n}" in text  # the whole answer, per student
        assert ("✓ agrees" in text) or ("✗ differs" in text)
        assert "█" in text or "▏" in text or "▎" in text  # bars
        pos = inspector.positions[0]
        assert set(pos["slots"]) == {"teacher", "student", "adapted"}
        assert all(len(pos["slots"][s]["top"]) == 5 for s in pos["slots"])
        assert pos["slots"]["student"]["kl"] >= 0
        assert "Token inspector · position 1/" in str(inspector.border_title)


async def test_viewer_without_adapter_and_bad_settings(tiny_pair, tmp_path: Path) -> None:
    state = AppState(
        spec=RunSpec(
            teacher=str(tiny_pair.teacher),
            student=str(tiny_pair.student),
            config=KDConfig(output=str(tmp_path / "none")),
        )
    )
    app = _Host(state)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ViewerPane)
        assert app.query_one("#view-adapter", Input).value == ""
        app.query_one("#view-temp", Input).value = "hot"
        pane.ask("Hello")
        status = app.query_one("#view-status", Static)
        assert "T: a number" in str(status.render()) and status.has_class("error")
        app.query_one("#view-temp", Input).value = "0"
        app.query_one("#view-max", Input).value = "4"
        pane.ask("Hello")
        inspector = app.query_one(TokenInspector)
        await wait_for(pilot, lambda: bool(inspector.positions))
        assert "no adapter yet" in str(app.query_one("#ans-adapted-text", Static).render())
        assert set(inspector.positions[0]["slots"]) == {"teacher", "student"}

        # a run finishes elsewhere: the adapter box picks up its output
        run = tmp_path / "run"
        (run / "thinking").mkdir(parents=True)
        (run / "thinking" / "adapters.safetensors").write_bytes(b"")
        pane.post_message(RunCompleted(run))  # (the app also sets state.last_output)
        await wait_for(
            pilot, lambda: app.query_one("#view-adapter", Input).value == str(run / "thinking")
        )
