"""End to end: training the tiny local pair from the dashboard with the real trainer, a
detached `kd distill` that owns its output folder (kd_tui/detached.py), controlled through
the folder's control file."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import ProgressBar
from tui_support import wait_until

from kd_core.run.record import read_record
from kd_tui.app import KDApp
from kd_tui.detached import DetachedRun
from kd_tui.widgets.loss_plot import LossPlot

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
RUN_TIMEOUT = 90.0  # seconds; a tiny run takes a few


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


def _app(tiny_pair, tmp_path: Path, **config) -> KDApp:
    app = KDApp(config_path=tmp_path / "kd.toml")
    spec = app.state.spec
    spec.teacher, spec.student = str(tiny_pair.teacher), str(tiny_pair.student)
    spec.domains = ["thinking"]
    spec.config = spec.config.replace(output=str(tmp_path / "out"), **config)
    return app


async def test_train_tiny_pair_from_the_ui(tiny_pair, tmp_path: Path) -> None:
    app = _app(tiny_pair, tmp_path, num_iters=6, max_tokens=16, batch_size=2, steps_per_save=6)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        assert isinstance(app.engine, DetachedRun)
        await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT)
        pane = app.train_pane
        pane.flush(force=True)
        await pilot.pause()
        assert pane.view.status == "finished", pane.view.error
        assert app.query_one(LossPlot).points == 6
        bar = app.query_one("#phase-bar", ProgressBar)
        assert bar.progress == bar.total == 6
        overall = app.query_one("#overall-bar", ProgressBar)
        assert overall.progress == overall.total == 6
        assert (tmp_path / "out" / "thinking" / "adapters.safetensors").is_file()
        assert app.state.last_output == tmp_path / "out"
        assert app.query_one("#train-summary").display
        await wait_until(pilot, lambda: app.engine.returncode is not None, timeout=RUN_TIMEOUT)
        assert app.engine.returncode == 0


async def test_pause_stop_and_resume_a_real_run(tiny_pair, tmp_path: Path) -> None:
    # A custom domain of four prompts keeps the teacher pass short.
    prompts = tmp_path / "quick.txt"
    prompts.write_text("Name a colour.\nCount to three.\nSay hello.\nPick a number.\n")
    # So many steps that the run cannot end before the test stops it, however fast it is.
    app = _app(
        tiny_pair,
        tmp_path,
        num_iters=1_000_000,
        max_tokens=8,
        batch_size=1,
        steps_per_save=1_000_000,
    )
    app.state.spec.domains = []
    app.state.spec.domain_files = [str(prompts)]
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        view = app.train_pane.view
        await wait_until(
            pilot, lambda: view.last_step is not None or not app.running, timeout=RUN_TIMEOUT
        )
        assert app.running, view.error
        await pilot.press("space")
        await wait_until(pilot, lambda: view.paused, timeout=RUN_TIMEOUT)
        await pilot.press("space")
        await wait_until(pilot, lambda: not view.paused, timeout=RUN_TIMEOUT)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT)
        assert view.status == "stopped", view.error
        stopped_at = view.last_step.step
        assert stopped_at < 1_000_000
        checkpoints = list((tmp_path / "out" / "quick").glob("checkpoint_*"))
        assert checkpoints, "a stop saves a checkpoint"
        # Resume with a few steps left: the run continues from the checkpoint and finishes.
        app.state.spec.config = app.state.spec.config.replace(num_iters=stopped_at + 3)
        await pilot.press("r")
        await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT)
        assert view.status == "finished", view.error
        assert view.series.x[-1] == stopped_at + 3
        assert view.results[0].resumed_from is not None
        assert (tmp_path / "out" / "quick" / "adapters.safetensors").is_file()


async def test_a_two_process_run_from_the_ui(tiny_pair, tmp_path: Path) -> None:
    # kd-tui --processes 2: the dashboard starts `kd distill --distributed 2` and follows
    # process 0's events; a stop reaches process 0 through the control file.
    app = _app(tiny_pair, tmp_path, num_iters=4, max_tokens=12, batch_size=2, steps_per_save=4)
    app.state.processes = 2
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT * 2)
        pane = app.train_pane
        pane.flush(force=True)
        await pilot.pause()
        assert pane.view.status == "finished", pane.view.error
        assert app.query_one(LossPlot).points == 4  # rank 0's steps only, each once
        assert (tmp_path / "out" / "thinking" / "adapters.safetensors").is_file()
        # Rank 0 owned the folder; its --resume command launches two processes again.
        record = read_record(tmp_path / "out")
        assert record is not None and record.exit_status == 0
        assert "--distributed 2" in record.resume_command
