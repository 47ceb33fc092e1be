"""Runs that outlive the dashboard: attaching replays a run folder's event file into the Train
pane and follows it live; control words reach the run through its control file; a run
whose process died without a final event shows as crashed with its --resume command.

The fast tests write the folder with kd_core's RunWriter (what `kd distill` does) from the
test itself; the slow ones run the real trainer (tiny pair)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable
from tui_support import scripted_run, wait_until

from kd_core.events import Paused, RunFinished, Step
from kd_core.run.record import EVENTS_FILE, RunWriter, is_live, run_dir
from kd_core.run.status import read_state
from kd_tui.app import KDApp
from kd_tui.detached import DetachedRun, _LineReader
from kd_tui.run_view import RunView
from kd_tui.widgets.confirm import ConfirmScreen
from kd_tui.widgets.loss_plot import LossPlot

pytestmark = pytest.mark.anyio
RUN_TIMEOUT = 90.0


def _writer(out: Path) -> RunWriter:
    return RunWriter.open(out, ["kd", "distill"], resume=False, extra=[])


def test_the_line_reader_waits_for_a_line_to_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    step = Step("d", 1, 9, 1.0, 2.0, 1.3, 1e-4, 64, 100.0, 0.5, 0.1, 1.0).to_json()
    path.write_text(step + "\n" + step[:20])
    reader = _LineReader(path, offset=0)
    assert [e.kind for _, e in reader.read()] == ["step"]
    assert reader.read() == []  # the half line is not an event yet
    with open(path, "a") as fh:
        fh.write(step[20:] + "\n")
    got = reader.read()
    assert [(h, e.kind) for h, e in got] == [(False, "step")] and got[0][1].step == 1


BAD_LINES = [b"[]", b"3", b'"x"', b"null", b'{"kind": "step", "st', b'{"no": "kind"}', b"\xff\xfe"]


def _with_bad_lines(path: Path) -> int:
    """The event file with a line that is no event after each of its first lines."""
    lines = path.read_bytes().splitlines()
    mixed = [x for pair in zip(lines, BAD_LINES, strict=False) for x in pair]
    path.write_bytes(b"\n".join(mixed + lines[len(BAD_LINES) :]) + b"\n")
    return min(len(lines), len(BAD_LINES))


def test_the_line_reader_skips_lines_that_are_no_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    step = Step("d", 1, 9, 1.0, 2.0, 1.3, 1e-4, 64, 100.0, 0.5, 0.1, 1.0).to_json().encode()
    unknown = b'{"kind": "from_a_newer_kd", "x": 1}'
    path.write_bytes(b"\n".join([*BAD_LINES, step, unknown, b"", step]) + b"\n")
    reader = _LineReader(path, offset=0)
    got = [e for _, e in reader.read()]
    assert [e.kind for e in got] == ["log", "step", "step"]
    assert got[0].message == f"skipped 8 unreadable lines of {path}"  # said once, counted
    assert reader.read() == []
    with open(path, "ab") as fh:
        fh.write(b"[1, 2]\n" + step + b"\n")
    got = [e for _, e in reader.read()]
    assert [e.kind for e in got] == ["log", "step"] and got[0].message.startswith("skipped 1 ")


async def test_attach_replays_a_run_whose_event_file_has_lines_that_are_no_events(
    tmp_path: Path,
) -> None:
    """`[]`, `3`, a torn object... in events.jsonl used to stop the follower ("cannot follow
    … AttributeError") with nothing replayed and a finished run shown as failed."""
    out = tmp_path / "out"
    w = _writer(out)
    for e in scripted_run(iters=30, output=str(out)):
        w(e)
    w.close(0)
    bad = _with_bad_lines(run_dir(out) / EVENTS_FILE)
    state = read_state(out)  # kd status reads the same file with the same reader
    assert state.state == "finished" and state.last_step["step"] == 30
    app = KDApp(config_path=tmp_path / "kd.toml", attach=out)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: not app.running)
        view = app.train_pane.view
        assert view.status == "finished" and view.series.x[-1] == 30
        await pilot.pause()
        log = " ".join(" ".join(s.text.split()) for s in app.query_one("#train-log").lines)
        assert log.count("unreadable") == 1 and f"skipped {bad} unreadable lines" in log


async def test_attach_replays_a_finished_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = _writer(out)
    for e in scripted_run(iters=30, output=str(out)):
        w(e)
    w.close(0)
    app = KDApp(config_path=tmp_path / "kd.toml", attach=out)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: not app.running)
        view = app.train_pane.view
        assert view.status == "finished" and view.series.x[-1] == 30
        assert app.query_one("#tabs").active == "tab-train"
        assert isinstance(app.engine, DetachedRun) and not app.engine.started_here
        assert app.state.known_outputs[0] == out


async def test_attach_follows_a_live_run_and_controls_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    events = scripted_run(iters=20, output=str(out))
    w = _writer(out)
    for e in events[:12]:
        w(e)
    app = KDApp(config_path=tmp_path / "kd.toml", attach=out)
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.train_pane.view
        await wait_until(pilot, lambda: view.last_step is not None)
        assert app.running and view.status == "running"
        first = view.last_step.step
        for e in events[12:-3]:
            w(e)
        await wait_until(pilot, lambda: view.last_step.step > first)
        await pilot.press("space")
        await pilot.press("s")
        control = run_dir(out) / "control"
        await wait_until(pilot, lambda: control.read_text().split() == ["pause", "stop"])
        w(Paused(True, "thinking", 17))
        await wait_until(pilot, lambda: view.paused)
        w(RunFinished(str(out / "kd_summary.json"), [], stopped=True))
        w.close(3)
        await wait_until(pilot, lambda: not app.running)
        assert view.status == "stopped"


async def test_a_crashed_run_shows_its_resume_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = _writer(out)
    for e in scripted_run(iters=10, output=str(out), finish=False):
        w(e)
    os.close(w._fd)  # the process is gone (the kernel drops its lock), no final event
    app = KDApp(config_path=tmp_path / "kd.toml", attach=out)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: not app.running)
        view = app.train_pane.view
        assert view.status == "failed" and "without a final event" in view.error
        assert w.record.resume_command in view.error


async def test_the_runs_pane_marks_live_runs_and_attaches(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = _writer(out)
    for e in scripted_run(iters=10, output=str(out), finish=False):
        w(e)
    (out / "thinking").mkdir(parents=True, exist_ok=True)
    (out / "thinking" / "metrics.jsonl").write_text('{"step": 1, "kd": 1, "ce": 2}\n')
    app = KDApp(config_path=tmp_path / "kd.toml")
    app.state.spec.config = app.state.spec.config.replace(output=str(out))
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("6")
            table = app.query_one("#runs-table", DataTable)
            await wait_until(pilot, lambda: table.row_count == 1)
            cells = [str(c) for c in table.get_row_at(0)]
            assert cells[2] == "thinking" and cells[7] == "● running"
            table.focus()
            await pilot.press("a")
            await wait_until(pilot, lambda: app.train_pane.view.last_step is not None)
            assert app.running and app.query_one("#tabs").active == "tab-train"
            await pilot.press("ctrl+q")  # attached, not started here: quits at once
            await wait_until(pilot, lambda: not app.is_running)
    finally:
        w.close(0)


async def test_starting_into_a_folder_a_live_run_holds_is_refused(tmp_path: Path) -> None:
    """The trainer the dashboard starts refuses with one line; the dashboard shows that line,
    not the live run's events."""
    out = tmp_path / "out"
    w = _writer(out)
    for e in scripted_run(iters=10, output=str(out), finish=False):
        w(e)
    app = KDApp(config_path=tmp_path / "kd.toml")
    app.state.spec.config = app.state.spec.config.replace(output=str(out))
    app.state.spec.domains = ["thinking"]
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("t")
            await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT)
            view = app.train_pane.view
            assert view.status == "failed" and "in use by a live run" in view.error
            assert view.last_step is None and "\n" not in view.error
            assert app.engine.returncode == 2
    finally:
        w.close(0)


def test_run_folders_are_read_without_mlx() -> None:
    code = "import sys, kd_core.run.status, kd_tui.runs_data; print('mlx.core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# ---- the real trainer -------------------------------------------------------------------------
def _spec(app: KDApp, tiny_pair, out: Path, prompts: Path, **config) -> None:
    prompts.write_text("Name a colour.\nCount to three.\nSay hello.\nPick a number.\n")
    spec = app.state.spec
    spec.teacher, spec.student = str(tiny_pair.teacher), str(tiny_pair.student)
    spec.domains, spec.domain_files = [], [str(prompts)]
    spec.config = spec.config.replace(output=str(out), max_tokens=8, batch_size=1, **config)


class _Quiet:
    """An app stand-in for a DetachedRun followed without a screen."""

    def post_message(self, message: object) -> bool:
        return True


def _follow(out: Path) -> tuple[DetachedRun, RunView]:
    source = DetachedRun(_Quiet())  # type: ignore[arg-type]
    source.attach(out)
    return source, RunView()


def _pump(source: DetachedRun, view: RunView) -> None:
    for e in source.drain():
        view.apply(e)


@pytest.mark.slow
async def test_leave_it_running_then_attach_from_another_dashboard(tiny_pair, tmp_path) -> None:
    out = tmp_path / "out"
    a = KDApp(config_path=tmp_path / "kd.toml")
    _spec(a, tiny_pair, out, tmp_path / "quick.txt", num_iters=1_000_000, steps_per_save=10**6)
    async with a.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        view = a.train_pane.view
        await wait_until(pilot, lambda: view.last_step is not None, timeout=RUN_TIMEOUT)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: isinstance(a.screen, ConfirmScreen))
        await pilot.click("#answer-leave")
        await wait_until(pilot, lambda: not a.is_running)
    pid = read_state(out).record.pid
    try:
        assert is_live(out), "the run outlives the dashboard that started it"
        b = KDApp(config_path=tmp_path / "kd.toml", attach=out)
        async with b.run_test(size=(120, 40)) as pilot:
            view = b.train_pane.view
            await wait_until(pilot, lambda: view.last_step is not None, timeout=RUN_TIMEOUT)
            seen = view.last_step.step
            await wait_until(pilot, lambda: view.last_step.step > seen, timeout=RUN_TIMEOUT)
            assert b.query_one(LossPlot).points > 0
            await pilot.press("s")  # stop works on the attached run
            await wait_until(pilot, lambda: not b.running, timeout=RUN_TIMEOUT)
            assert view.status == "stopped", view.error
            state = read_state(out)
            assert state.state == "stopped" and state.record.exit_status == 3
            stopped_at = state.last_step["step"]
            # r continues *that* run (its folder's settings), not the Config tab's.
            await pilot.press("r")
            await wait_until(
                pilot,
                lambda: view.last_step is not None and view.last_step.step > stopped_at,
                timeout=RUN_TIMEOUT,
            )
            pid = read_state(out).record.pid
            assert b.engine.started_here and view.series.x[0] == 1  # the replayed curve stays
            await pilot.press("s")
            await wait_until(pilot, lambda: not b.running, timeout=RUN_TIMEOUT)
            assert view.status == "stopped", view.error
    finally:
        if is_live(out):
            os.kill(pid, 9)


@pytest.mark.slow
async def test_an_attached_view_draws_the_same_curves(tiny_pair, tmp_path) -> None:
    """A follower that attaches mid-run ends with the series of the dashboard that started
    the run (same x, same KD / CE / combined, point by point)."""
    out = tmp_path / "out"
    a = KDApp(config_path=tmp_path / "kd.toml")
    _spec(a, tiny_pair, out, tmp_path / "quick.txt", num_iters=60, steps_per_save=60)
    async with a.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        view = a.train_pane.view
        await wait_until(pilot, lambda: view.last_step is not None, timeout=RUN_TIMEOUT)
        source, follower = _follow(out)
        await wait_until(pilot, lambda: not a.running, timeout=RUN_TIMEOUT)
        deadline = time.monotonic() + RUN_TIMEOUT
        while source.running and time.monotonic() < deadline:
            _pump(source, follower)
            await pilot.pause(0.05)
        _pump(source, follower)
        assert follower.status == view.status == "finished"
        for name in ("x", "kd", "ce", "combined"):
            assert getattr(follower.series, name) == getattr(view.series, name), name
        assert len(view.series.x) == 60


@pytest.mark.slow
def test_kd_distill_started_in_a_terminal_can_be_attached(tiny_pair, tmp_path) -> None:
    """`kd distill` (not the dashboard) writes the same folder: a follower sees its steps
    live and its end."""
    out = tmp_path / "out"
    prompts = tmp_path / "quick.txt"
    prompts.write_text("Say hello.\nPick a number.\n")
    cmd = [sys.executable, "-m", "kd_core", "distill", "--teacher", str(tiny_pair.teacher)]
    cmd += ["--student", str(tiny_pair.student), "--domain-file", str(prompts), "--quiet"]
    cmd += ["--iters", "40", "--max-tokens", "8", "--batch-size", "1", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (run_dir(out) / EVENTS_FILE).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        source, view = _follow(out)
        while source.running and time.monotonic() < deadline:
            _pump(source, view)
            time.sleep(0.05)
        _pump(source, view)
        assert view.status == "finished" and view.series.x[-1] == 40, view.error
        assert proc.wait(timeout=RUN_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
