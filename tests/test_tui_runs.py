"""Runs pane: finds runs written on disk (real kd_summary.json / metrics.jsonl format),
lists them, plots the selected run, compares two."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, Static
from textual_plotext import PlotextPlot
from tui_support import wait_until

from kd_core.config import KDConfig, RunSpec
from kd_tui.messages import RunCompleted
from kd_tui.panes.runs import RunsPane
from kd_tui.runs_data import downsample, find_runs, read_metrics, series
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio


def write_run(output: Path, domains: dict[str, int], updated: str, offset: float = 0.0) -> Path:
    """A run as kd_core.distiller writes it: <output>/kd_summary.json + <domain>/metrics.jsonl."""
    summary = {
        "teacher": "/models/teacher-big",
        "student": "/models/student-small",
        "config": KDConfig(output=str(output)).to_dict(),
        "updated": updated,
        "run_seconds": 12.5,
        "domains": {},
    }
    for name, steps in domains.items():
        d = output / name
        d.mkdir(parents=True)
        rows = []
        for s in range(1, steps + 1):
            kd = 3.0 / s + offset
            ce = 2.0 / math.sqrt(s) + offset
            rows.append(
                {
                    "step": s,
                    "kd": kd,
                    "ce": ce,
                    "combined": 0.7 * kd + 0.3 * ce,
                    "lr": 1e-4,
                    "tokens": 100,
                    "step_time": 0.1,
                    "elapsed_s": 0.1 * s,
                }
            )
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tail = rows[-10:]
        summary["domains"][name] = {
            "domain": name,
            "final_kd_loss": sum(r["kd"] for r in tail) / len(tail),
            "final_ce_loss": sum(r["ce"] for r in tail) / len(tail),
            "final_combined_loss": sum(r["combined"] for r in tail) / len(tail),
            "training_time_seconds": 1.0,
            "adapter_path": str(d),
            "steps": steps,
            "tokens": 100 * steps,
            "tokens_per_second": 1000.0,
            "peak_memory_gb": 0.1,
            "metrics_path": str(d / "metrics.jsonl"),
            "examples": 4,
            "teacher_cache": None,
            "resumed_from": None,
            "stopped": False,
            "checkpoints": [],
        }
    output.mkdir(parents=True, exist_ok=True)
    (output / "kd_summary.json").write_text(json.dumps(summary, indent=2))
    return output


class _Host(App):
    def __init__(self, output: Path) -> None:
        super().__init__()
        self.state = AppState(spec=RunSpec(config=KDConfig(output=str(output))))

    def compose(self) -> ComposeResult:
        yield RunsPane()


wait_for = partial(wait_until, timeout=10.0)


def test_runs_data(tmp_path: Path) -> None:
    out = write_run(tmp_path / "adapters_kd", {"thinking": 30, "task": 5}, "2025-01-02T10:00:00")
    write_run(tmp_path / "older", {"thinking": 8}, "2025-01-01T10:00:00", offset=0.5)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "kd_summary.json").write_text("{not json")
    runs = find_runs(out)  # the output folder, and its siblings through the parent
    assert [r.path.name for r in runs] == ["adapters_kd", "older"]
    assert [d.name for d in runs[0].domains] == ["thinking", "task"]
    assert runs[0].pair == "teacher-big → student-small"
    rows = read_metrics(runs[0].domains[0].metrics_path)
    assert len(rows) == 30
    xs, ys = downsample(*series(rows, "kd"), 10)
    assert len(xs) == 10 and xs[-1] == 30 and ys[-1] == rows[-1]["kd"]
    # a half-written last line (a live run) is skipped, not an error
    with open(runs[0].domains[1].metrics_path, "a") as fh:
        fh.write('{"step": 6, "kd"')
    assert len(read_metrics(runs[0].domains[1].metrics_path)) == 5


async def test_runs_pane_lists_plots_and_compares(tmp_path: Path) -> None:
    out = tmp_path / "adapters_kd"
    write_run(out, {"thinking": 40}, "2025-01-02T10:00:00")
    app = _Host(out)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#runs-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        cells = [str(c) for c in table.get_row_at(0)]
        assert cells[0] == "2025-01-02 10:00" and cells[2] == "thinking"
        assert cells[1] == "teacher-big → student-small"
        final_kd = float(cells[4])
        assert abs(final_kd - sum(3.0 / s for s in range(31, 41)) / 10) < 1e-3
        plot = app.query_one("#runs-plot", PlotextPlot)
        await pilot.pause()
        assert "40 steps" in str(plot.render())  # the title names the run and its steps

        # a run in another folder, added by hand; then a finished run shows up on RunCompleted
        other = write_run(
            tmp_path / "elsewhere" / "exp1", {"task": 12}, "2025-01-03T09:00:00", offset=0.25
        )
        box = app.query_one("#runs-add", Input)
        box.focus()
        box.value = str(other.parent)
        await pilot.press("enter")
        await wait_for(pilot, lambda: table.row_count == 2)
        assert str(table.get_row_at(0)[2]) == "task"  # newest first

        write_run(tmp_path / "adapters_kd2", {"debug": 6}, "2025-01-04T09:00:00")
        app.query_one(RunsPane).post_message(RunCompleted(tmp_path / "adapters_kd2"))
        await wait_for(pilot, lambda: table.row_count == 3)

        # compare: mark the newest, move to the next, the side-by-side table appears
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("m")
        await pilot.press("down")
        await pilot.pause()
        compare = app.query_one("#runs-compare")
        assert not compare.has_class("-hidden")
        final = app.query_one("#runs-final", DataTable)
        assert [str(c) for c in final.get_row_at(0)][0] == "KD"
        assert "vs" in str(plot.render())
        await pilot.press("c")  # cycle the compared curves: still renders
        await pilot.press("x")
        await pilot.pause()
        assert compare.has_class("-hidden")


async def test_runs_pane_bad_folder_and_empty(tmp_path: Path) -> None:
    app = _Host(tmp_path / "nothing-here")
    async with app.run_test(size=(120, 40)) as pilot:
        note = app.query_one("#runs-note", Static)
        await wait_for(pilot, lambda: "no runs yet" in str(note.render()))
        box = app.query_one("#runs-add", Input)
        box.focus()
        box.value = str(tmp_path / "missing")
        await pilot.press("enter")
        await pilot.pause()
        assert "is not a folder" in str(note.render()) and note.has_class("error")


def test_odd_summaries_do_not_break_the_scan(tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "kd_summary.json").write_text(
        json.dumps(
            {
                "domains": {
                    "x": {"steps": "many", "metrics_path": 3, "final_kd_loss": "nan"},
                    "y": "not a dict",
                }
            }
        )
    )
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "kd_summary.json").write_text("[1, 2]")
    runs = find_runs(odd)
    assert [r.path.name for r in runs] == ["odd"]
    assert [(d.name, d.steps, d.final_kd) for d in runs[0].domains] == [
        ("x", 0, None),
        ("y", 0, None),
    ]
