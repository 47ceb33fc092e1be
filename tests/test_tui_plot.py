"""The Train pane's loss plot on long runs (issue 14 item 6): debiased EMA smoothing that
restarts per domain, one curve segment per domain, a log y axis; the keys that drive them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from textual.widgets import Static
from tui_support import run_script_to_end, scripted_app, scripted_run

from kd_core.events import Step
from kd_tui.app import KDApp
from kd_tui.run_view import SMOOTHING_STEPS, LossSeries, ema
from kd_tui.widgets.help_screen import HelpScreen
from kd_tui.widgets.loss_plot import LossPlot

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


def tensorboard_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing (its scalar dashboard's debiased EMA), written out plainly."""
    last, out = 0.0, []
    for n, v in enumerate(values, start=1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


# ---- the EMA ------------------------------------------------------------------------------
def test_ema_weight_zero_is_the_raw_curve() -> None:
    values = [3.0, 1.0, 4.0, 1.5]
    assert ema(values, 0.0) == values


def test_ema_is_debiased() -> None:
    # A plain EMA from 0 would start at (1 - w) * v: debiased, the first point is the value
    # itself and a constant curve stays constant.
    assert ema([5.0], 0.97) == [pytest.approx(5.0)]
    assert ema([2.0] * 50, 0.99) == pytest.approx([2.0] * 50)
    assert ema([2.0, 4.0], 0.5) == pytest.approx([2.0, 10 / 3])
    noisy = [1 + 0.5 * math.sin(i * 1.7) + 0.01 * i for i in range(300)]
    for w in SMOOTHING_STEPS:
        assert ema(noisy, w) == pytest.approx(tensorboard_ema(noisy, w))


def test_ema_smooths() -> None:
    zigzag = [1.0 if i % 2 else 3.0 for i in range(200)]
    tail = ema(zigzag, 0.9)[100:]
    assert max(tail) - min(tail) < 0.25  # the raw curve swings by 2
    assert sum(tail) / len(tail) == pytest.approx(2.0, abs=0.1)


def test_ema_merged_points_count_as_their_steps() -> None:
    """LossSeries merges neighbours on long runs: a point standing for 3 equal steps decays
    the average as those 3 steps would, so the smoothing per step does not change."""
    assert ema([1.0, 4.0], 0.9, counts=[1, 3])[-1] == pytest.approx(ema([1.0, 4, 4, 4], 0.9)[-1])


def test_ema_passes_non_finite_values_through() -> None:
    out = ema([1.0, float("nan"), 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1])
    assert out[2] == pytest.approx(ema([1.0, 3.0], 0.5)[1])  # the NaN was not averaged in


# ---- segments: one per domain ------------------------------------------------------------
def two_domains(iters: int = 50, max_points: int = 2048) -> LossSeries:
    s = LossSeries(max_points=max_points)
    for d, level in enumerate((5.0, 1.0)):  # the second domain starts far lower
        for step in range(1, iters + 1):
            noise = 0.3 if step % 2 else -0.3
            s.add(d * iters + step, level + noise, level, level)
    return s


def test_segments_restart_per_domain() -> None:
    s = two_domains()
    first, second = s.segments(400, boundaries=[50], smoothing=0.9)
    assert max(first.x) <= 50 < min(second.x)  # no line joins the two domains
    assert first.smooth is not None and second.smooth is not None
    # the EMA restarts: the second domain's first smoothed point is its own first value,
    # not dragged towards the first domain's 5.0
    assert second.smooth["kd"][0] == pytest.approx(second.raw["kd"][0])
    assert second.smooth["kd"][0] == pytest.approx(1.3)
    assert all(v < 2 for v in second.smooth["kd"])
    assert s.segments(400, [50], 0.0)[0].smooth is None  # raw only: nothing extra to draw


def test_segments_without_boundaries_and_empty() -> None:
    s = two_domains()
    (whole,) = s.segments(400)
    assert whole.x == s.x and whole.raw["ce"] == s.ce
    assert LossSeries().segments(100, [5], 0.6) == []


def test_segments_downsample_to_the_width() -> None:
    s = two_domains(iters=1200)  # a real run's length: 2400 steps, merged to <= 2048 points
    assert s.stride == 2
    segs = s.segments(200, boundaries=[1200], smoothing=0.97, series=("combined",))
    assert len(segs) == 2 and set(segs[0].raw) == {"combined"}
    assert sum(len(seg.x) for seg in segs) <= 200 + len(segs)
    assert max(segs[0].x) <= 1200 < min(segs[1].x)
    for seg in segs:
        assert seg.smooth is not None and len(seg.smooth["combined"]) == len(seg.x)
    # smoothing happens on the stored points, before the buckets: heavy smoothing of the
    # noise leaves a line close to the domain's level
    rng = random.Random(0)
    bumpy = LossSeries()
    for step in range(1, 2401):
        bumpy.add(step, 1.0 + rng.uniform(-0.5, 0.5), 1.0, 1.0)
    (seg,) = bumpy.segments(200, smoothing=0.97, series=("kd",))
    assert seg.smooth is not None
    raw, smooth = seg.raw["kd"][10:], seg.smooth["kd"][10:]
    assert max(smooth) - min(smooth) < (max(raw) - min(raw)) / 2
    assert sum(smooth) / len(smooth) == pytest.approx(1.0, abs=0.05)


# ---- the widget, driven by its keys ----------------------------------------------------------
async def test_plot_keys_smoothing_and_log_scale(tmp_path: Path) -> None:
    events = scripted_run(("thinking", "task"), iters=12, output="/runs/out")
    app = scripted_app(events, tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        plot = app.query_one(LossPlot)
        assert plot.smoothing == 0.0 and not plot.log_y
        assert plot.border_title == "Loss · KD · CE · combined"
        assert plot.boundaries == [12]  # the second domain starts after step 12
        segs = plot.series.segments(200, plot.boundaries, plot.smoothing)
        assert len(segs) == 2 and max(segs[0].x) <= 12 < min(segs[1].x)

        seen = []
        for _ in SMOOTHING_STEPS:
            before = plot.builds
            await pilot.press("e")
            await pilot.pause()
            seen.append(plot.smoothing)
            assert plot.builds == before + 1  # redrawn once, at once
            if plot.smoothing:
                assert f"smoothed {plot.smoothing:g}" in str(plot.border_title)
        assert seen == [0.6, 0.9, 0.97, 0.0]
        assert "smoothed" not in str(plot.border_title)

        await pilot.press("e", "l")
        await pilot.pause()
        assert plot.log_y and plot.smoothing == 0.6
        assert plot.border_title == "Loss · KD · CE · combined · smoothed 0.6 · log"
        # a loss of exactly 0 (KD at alpha = 0) on a log axis draws, floored, no crash
        before = plot.builds
        pane = app.train_pane
        pane.handle_event(Step("task", 13, 13, 0.0, 0.0, 0.0, 1e-4, 64, 1e3, 0.1, 1.0, 0.0))
        pane.flush(force=True)
        await pilot.pause()
        assert plot.builds == before + 1
        await pilot.press("p", "l")
        await pilot.pause()
        assert plot.border_title == "Loss · KD · smoothed 0.6" and not plot.log_y


async def test_plot_keys_are_in_footer_help_and_palette(tmp_path: Path) -> None:
    shown = {b.key: b.description for b in KDApp.BINDINGS if b.show}  # the footer's keys
    assert shown["e"] == "smooth" and shown["l"] == "log y"
    app = scripted_app([], tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        keys = str(app.screen.query_one("#help-keys", Static).render())
        assert "plot smoothing" in keys and "linear ↔ log" in keys
        await pilot.press("escape")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Cycle plot smoothing", "Toggle plot log scale"} <= titles
