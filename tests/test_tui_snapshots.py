"""Snapshots (pytest-textual-snapshot) of the Train pane mid-run and finished, and the Config
pane, at 100x30 with a scripted run. Deterministic: no timestamps, the fixed kd-dark theme,
no toasts. Update with `.venv/bin/pytest tests/test_tui_snapshots.py --snapshot-update`."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input
from tui_support import open_config, run_script_to_end, scripted_app, scripted_run

from kd_core.config import RunSpec
from kd_core.config_file import save_toml
from kd_tui.app import KDApp

SIZE = (100, 30)


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))  # default theme
    path = tmp_path / "kd.toml"
    # The pair named explicitly: nothing on this machine can change the header.
    save_toml(
        RunSpec(teacher="demo-teacher", student="demo-student", domains=["thinking", "task"]), path
    )
    return path


def _app(events, config_path: Path) -> KDApp:
    return scripted_app(events, config_path, timestamps=False)


async def _settle(pilot) -> None:
    await run_script_to_end(pilot, pilot.app)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_train_mid_run(snap_compare, config_path: Path) -> None:
    events = scripted_run(("thinking", "task"), iters=16, output="/runs/out", finish=False)
    assert snap_compare(_app(events, config_path), terminal_size=SIZE, run_before=_settle)


def test_train_finished(snap_compare, config_path: Path) -> None:
    events = scripted_run(("thinking", "task"), iters=16, output="/runs/out")
    assert snap_compare(_app(events, config_path), terminal_size=SIZE, run_before=_settle)


def test_config_pane(snap_compare, config_path: Path) -> None:
    async def show_config(pilot) -> None:
        await open_config(pilot, pilot.app)
        alpha = pilot.app.query_one("#cfg-alpha", Input)
        alpha.cursor_blink = False  # a blinking cursor would make the picture random
        alpha.focus()  # its help opens under it
        await pilot.pause()

    assert snap_compare(_app([], config_path), terminal_size=SIZE, run_before=show_config)
