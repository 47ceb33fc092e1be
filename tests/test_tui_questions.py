"""The dashboard asks before a user loses work: quitting during a run, and starting over on
top of an earlier run's checkpoints. (Before: ctrl+q killed the trainer at once with no
checkpoint, and `t` deleted the earlier checkpoints without a word.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_support import scripted_app, scripted_run, wait_until

from kd_tui.widgets.confirm import ConfirmScreen

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


def _app(tmp_path: Path, **kw):
    app = scripted_app(scripted_run(iters=12, **kw), tmp_path / "kd.toml")
    app.state.spec.config = app.state.spec.config.replace(output=str(tmp_path / "out"))
    app.state.spec.domains = ["thinking"]
    return app


async def test_quit_during_a_run_asks_and_stop_saves_before_quitting(tmp_path: Path) -> None:
    app = _app(tmp_path, finish=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await wait_until(pilot, lambda: app.engine is not None and app.engine.replayed)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.running and app.engine.controls == []  # nothing killed yet
        await pilot.press("escape")  # keep running
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert app.running and app.is_running
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#answer-stop")
        await wait_until(pilot, lambda: not app.is_running)
    assert app.engine.controls == ["stop"]  # a graceful stop, then the quit


async def test_quit_when_idle_does_not_ask(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not app.is_running)


@pytest.mark.parametrize("answer,starts", [("cancel", []), ("over", [False]), ("resume", [True])])
async def test_start_over_earlier_checkpoints_asks(tmp_path: Path, answer, starts) -> None:
    ck = tmp_path / "out" / "thinking" / "checkpoint_40"
    ck.mkdir(parents=True)
    app = _app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert str(ck.parent) in app.screen.message
        await pilot.click(f"#answer-{answer}")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        if starts:
            await wait_until(pilot, lambda: app.engine is not None and app.engine.starts)
        await pilot.pause()
        got = [resume for _, resume in app.engine.starts] if app.engine else []
        assert got == starts
    assert ck.exists()  # the dashboard itself deletes nothing
