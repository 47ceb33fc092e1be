"""Train pane with a scripted event source: plot buffer, progress, summary, failure, controls.
Also the pure parts (RunView, LossSeries), the event source's queue and the trainer's
one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_source import ScriptedEventSource
from textual.widgets import Label, ProgressBar, RichLog, Static
from tui_support import failing_run, run_script_to_end, scripted_app, scripted_run, wait_until

from kd_core.events import Paused, PhaseStarted, Progress, RunFailed, RunFinished, Step, fmt_time
from kd_tui.detached import DetachedRun
from kd_tui.engine import one_line_error
from kd_tui.run_view import LossSeries, RunView
from kd_tui.widgets.loss_plot import LossPlot

pytestmark = pytest.mark.anyio


def label(app, selector: str) -> str:
    return str(app.query_one(selector, Label).render())


def static(app, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def log_text(app) -> str:
    return "\n".join(strip.text for strip in app.query_one("#train-log", RichLog).lines)


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


async def test_scripted_run_fills_plot_progress_and_summary(tmp_path: Path) -> None:
    events = scripted_run(("thinking", "task"), iters=12, output="/runs/out")
    app = scripted_app(events, tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        pane = app.train_pane
        assert app.query_one("TabbedContent").active == "tab-train"
        plot = app.query_one(LossPlot)
        assert plot.points == 24  # every step of both domains reached the buffer
        assert pane.view.series.x[-1] == 24  # the second domain continues the x axis
        phase = app.query_one("#phase-bar", ProgressBar)
        overall = app.query_one("#overall-bar", ProgressBar)
        assert phase.progress == phase.total == 12
        assert overall.progress == overall.total == 24
        summary = app.query_one("#train-summary", Static)
        assert summary.display
        text = static(app, "#train-summary")
        assert "thinking" in text and "task" in text and "/runs/out/task" in text
        assert "1.033" in text  # final combined loss per domain
        assert "✓ finished" in label(app, "#phase-text")
        domains = static(app, "#domain-list")
        assert domains.count("✓") == 2
        log = log_text(app)
        assert "teacher pass · thinking" in log and "checkpoint_12 saved" in log
        assert "cached" in log
        assert not app.running
        assert app.state.last_output == Path("/runs/out")
        assert "finished" in app.sub_title


async def test_now_panel_shows_latest_step_and_hyper_parameters(tmp_path: Path) -> None:
    app = scripted_app(scripted_run(iters=12, finish=False), tmp_path / "kd.toml", timestamps=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        last = app.train_pane.view.last_step
        assert last is not None
        assert label(app, "#now-combined").startswith(
            f"{last.combined:7.3f}".strip()[:4]
        ) or f"{last.combined:.3f}" in label(app, "#now-combined")
        assert "↓" in label(app, "#now-kd")  # the scripted KD falls
        assert label(app, "#now-hyper") == "T 2 · α 0.7 · r 16"
        assert "student pass" in label(app, "#phase-text")
        assert "ETA" in label(app, "#phase-count")
        assert app.running
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running)


async def test_on_policy_steps_show_their_sampling(tmp_path: Path) -> None:
    from dataclasses import replace

    from kd_core.events import RunStarted

    events = []
    for e in scripted_run(iters=12, finish=False):
        if isinstance(e, RunStarted):
            config = e.config.replace(divergence="reverse_kl", on_policy_ratio=0.5)
            e = replace(e, config=config)
        if isinstance(e, Step) and e.step % 2 == 0:
            e = replace(e, on_policy=True, sample_tokens_per_second=321.0)
        events.append(e)
    while not (isinstance(events[-1], Step) and events[-1].on_policy):
        events.pop()
    app = scripted_app(events, tmp_path / "kd.toml", timestamps=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        assert "sampled 321/s" in label(app, "#now-tps")
        assert "on-policy: the student samples (321 tok/s)" in label(app, "#phase-text")
        assert label(app, "#now-hyper") == "T 2 · α 0.7 · r 16 · reverse_kl · on-policy 0.5"
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running)


async def test_a_remote_teachers_throughput_is_shown(tmp_path: Path) -> None:
    """Steps scored by a remote teacher (kd_core/remote/step_targets.py) carry its speed."""
    from dataclasses import replace

    events = [
        replace(e, teacher_tokens_per_second=4321.0) if isinstance(e, Step) else e
        for e in scripted_run(iters=6, finish=False)
    ]
    app = scripted_app(events, tmp_path / "kd.toml", timestamps=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        assert "remote teacher 4,321/s" in label(app, "#now-tps")
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running)


async def test_failure_shows_one_line_reason(tmp_path: Path) -> None:
    app = scripted_app(failing_run("student: out of memory at step 3"), tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        banner = app.query_one("#train-banner", Static)
        assert banner.display
        assert static(app, "#train-banner") == "✗ Run failed: student: out of memory at step 3"
        assert "✗ failed" in label(app, "#phase-text")
        assert not app.running and app.train_pane.view.status == "failed"
        assert any("out of memory" in n.message for n in app._notifications)
        # A new run after a failure starts cleanly.
        await pilot.press("t")
        await wait_until(pilot, lambda: app.engine.replayed and not app.running)

        class Unstartable(ScriptedEventSource):
            def start(self, spec, resume=False):
                raise OSError("no such interpreter")

        app.engine = Unstartable(app, [])
        await pilot.press("t")
        await wait_until(pilot, lambda: not app.running)
        assert app.train_pane.view.error == "cannot start the trainer: no such interpreter"


async def test_pause_resume_stop_and_resume_run(tmp_path: Path) -> None:
    mid = scripted_run(iters=12, finish=False)
    rest = scripted_run(iters=12)
    app = scripted_app(mid, tmp_path / "kd.toml", resume_events=rest)
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        source = app.engine
        await pilot.press("space")
        await wait_until(pilot, lambda: app.train_pane.view.paused)
        app.train_pane.flush(force=True)
        assert "paused" in label(app, "#phase-text")
        assert "paused" in app.sub_title
        await pilot.press("space")
        await wait_until(pilot, lambda: not app.train_pane.view.paused)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running)
        assert source.controls == ["pause", "resume", "stop"]
        assert app.train_pane.view.status == "stopped"
        assert "■ stopped" in label(app, "#phase-text")
        await pilot.press("r")
        await wait_until(pilot, lambda: source.done and not app.running)
        assert source.starts[-1][1] is True  # started with resume
        assert app.train_pane.view.status == "finished"
        assert app.query_one(LossPlot).points == 12  # re-run steps replaced, not doubled


async def test_idle_keys_and_plot_series_cycle(tmp_path: Path) -> None:
    app = scripted_app(scripted_run(), tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4", "space", "s")
        await pilot.pause()
        assert app.engine is None and not app.running  # nothing to pause or stop
        assert "press t to train" in label(app, "#phase-text")
        plot = app.query_one(LossPlot)
        seen = []
        for _ in range(4):
            await pilot.press("p")
            seen.append(plot.mode)
        assert seen == ["kd", "ce", "combined", "all"]
        await pilot.press("p")
        assert plot.border_title == "Loss · KD"


async def test_build_phase_has_progress(tmp_path: Path) -> None:
    events = scripted_run(build=True)[:3]  # the demo pair is being built
    app = scripted_app(events, tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        assert "building the demo pair" in label(app, "#phase-text")
        assert label(app, "#phase-count").startswith("3/3")
        assert "building demo pair" in app.sub_title
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.running)


async def test_plot_is_built_from_the_buffer_not_per_event(tmp_path: Path) -> None:
    app = scripted_app([], tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        pane, plot = app.train_pane, app.query_one(LossPlot)
        pane.handle_event(PhaseStarted("student", "thinking", 500))
        await pilot.pause()
        before = plot.builds
        for i in range(1, 501):  # a burst of steps between two timer ticks
            pane.handle_event(
                Step(
                    "thinking",
                    i,
                    500,
                    1.0,
                    2.0,
                    1.3,
                    1e-4,
                    64,
                    1e3,
                    0.1,
                    i * 0.01,
                    (500 - i) * 0.01,
                )
            )
        assert plot.points == 500 and plot.builds == before  # buffered, not drawn
        pane.flush()
        await pilot.pause()
        assert plot.builds == before + 1, (before, plot.builds)


# ---- the model behind the pane (no UI) ------------------------------------------------
def test_series_resume_replaces_repeated_steps() -> None:
    s = LossSeries()
    for x in range(1, 11):
        s.add(x, 1.0, 2.0, 1.5)
    s.add(7, 0.5, 1.0, 0.7)  # resumed from checkpoint 6
    assert s.x == [1, 2, 3, 4, 5, 6, 7]
    assert s.kd[-1] == 0.5


def test_series_downsample_keeps_width_and_means() -> None:
    s = LossSeries()
    for x in range(1, 1001):
        s.add(x, float(x), 0.0, 1.0)
    xs, ys = s.downsample(100)
    assert len(xs) == len(ys["kd"]) == 100
    assert ys["kd"][0] == pytest.approx(5.5) and ys["combined"] == [1.0] * 100
    small_x, _ = LossSeries().downsample(10)
    assert small_x == []


def test_series_stays_bounded_on_long_runs() -> None:
    s = LossSeries(max_points=64)
    for x in range(1, 10_001):
        s.add(x, float(x), 1.0, 2.0)
    assert len(s) == 10_000 and len(s.x) <= 64  # every step counted, few points kept
    assert s.kd == s.x  # means of x and of kd = x stay equal
    assert s.x[-1] <= 10_000 and s.x[0] < 200
    s.add(9_000, 0.0, 0.0, 0.0)  # resumed from an earlier checkpoint
    assert len(s) <= 9_000  # the steps after it were dropped
    assert s.kd[-1] < s.x[-1]  # the new point (kd 0) is in the last one


def test_trend_is_per_domain() -> None:
    s = LossSeries()
    for x in range(1, 21):
        s.add(x, 10.0 - x * 0.1, 0.0, 0.0)
    assert s.trend("kd") == pytest.approx(-1.0)
    for x in range(21, 25):
        s.add(x, 50.0 - x, 0.0, 0.0)  # a new domain starts higher
    assert s.trend("kd", since_x=20) < 0


def test_runview_overall_eta_and_failure() -> None:
    v = RunView()
    for e in scripted_run(("a", "b"), iters=10, finish=False)[:20]:
        v.apply(e)
    assert v.total_steps == 20 and v.domain == "a"
    assert v.overall_eta == pytest.approx((20 - v.steps_done) * 0.5)
    v.apply(RunFailed("boom", domain="a"))
    assert v.status == "failed" and v.domains["a"].state == "failed"
    assert fmt_time(3723) == "1:02:03" and fmt_time(None) == "--:--"


def test_runview_stop_marks_domain() -> None:
    v = RunView()
    for e in scripted_run(("a",), iters=10, finish=False):
        v.apply(e)
    v.apply(Paused(True, "a", 5))
    assert v.paused
    v.apply(RunFinished("", [], stopped=True))
    assert v.status == "stopped" and not v.paused and v.domains["a"].state == "stopped"


def test_progress_event_sets_phase() -> None:
    v = RunView()
    v.apply(Progress("build", None, 2, 5, 1.0, "tokenizer"))
    assert v.phase == "build" and (v.phase_done, v.phase_total) == (2, 5)


# ---- the event source's queue ------------------------------------------------------------
def test_the_trainers_error_line() -> None:
    assert one_line_error(["noise", "kd: error: domain: bad", ""], 2) == "domain: bad"
    assert "signal 9" in one_line_error([], -9)


def test_the_source_queues_steps_and_wakes_on_other_events() -> None:
    """Steps wait in the queue (no UI wake-up each); other events wake the UI; order holds;
    a finished run's late words are dropped once a new run started."""

    class FakeApp:
        def __init__(self) -> None:
            self.posted: list[object] = []

        def post_message(self, message: object) -> bool:
            self.posted.append(message)
            return True

    app = FakeApp()
    source = DetachedRun(app)  # type: ignore[arg-type]
    source._gen, source._active = 1, True
    events = scripted_run(iters=3)
    for e in events:
        source._post([e], gen=1)
    steps = sum(isinstance(e, Step) for e in events)
    assert len(app.posted) == len(events) - steps  # one wake-up per non-step event
    assert source.drain() == events and source.drain() == []
    assert not source.running  # the terminal event ended the run
    source._gen, source._active = 2, True
    source._post([RunFailed("old run exited")], gen=1)  # an earlier follow's last word
    assert source.drain() == [] and source.running
