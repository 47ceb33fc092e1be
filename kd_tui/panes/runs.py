"""Runs pane: runs found on disk (live ones marked), their loss curves, two runs compared.

Keys: ↑/↓ pick a run (its curves follow) · a attach: follow it in the Train tab (live or
not) · m mark it for comparison · x stop comparing · c cycle the plotted curves · ctrl+r
rescan · type a folder in the box + enter to scan it too. (p and r stay the app's plot /
resume keys.) The folders scanned: the configured output with its siblings, the folders
added here, and the ones the dashboard knows (recent runs, --attach).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import DataTable, Input, Static
from textual_plotext import PlotextPlot

from kd_tui.messages import AttachRequested, RunCompleted, StateChanged
from kd_tui.panes.paths import PathSuggester
from kd_tui.runs_data import (
    DomainRun,
    RunInfo,
    downsample,
    final_losses,
    find_runs,
    named_model,
    read_metrics,
    series,
)
from kd_tui.state import app_state

MODES = ("all", "combined", "kd", "ce")
STATE_MARKS = {"running": "● running", "paused": "● paused", "crashed": "✗ crashed"}
LABELS = {"kd": "KD", "ce": "CE", "combined": "combined"}


@dataclass
class Row:
    run: RunInfo
    domain: DomainRun | None

    @property
    def label(self) -> str:
        return f"{self.run.path.name}/{self.domain.name if self.domain else '-'}"


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


class RunsPane(Container):
    DEFAULT_CSS = """
    RunsPane { layout: vertical; }
    RunsPane #runs-top { height: 3; }
    RunsPane #runs-add { width: 1fr; }
    RunsPane #runs-note { width: 1fr; padding: 1 1 0 1; color: $text-muted; }
    RunsPane #runs-note.error { color: $error; }
    RunsPane #runs-table { height: 10; border: round $primary-darken-2; }
    RunsPane #runs-bottom { height: 1fr; }
    RunsPane #runs-plot { width: 1fr; border: round $primary-darken-2; }
    RunsPane #runs-compare { width: 46; border: round $primary-darken-2; }
    RunsPane #runs-compare.-hidden { display: none; }
    RunsPane #runs-keys { height: 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("a", "attach", "attach"),
        Binding("m", "mark", "mark for compare"),
        Binding("x", "unmark", "stop comparing"),
        Binding("c", "cycle_plot", "curves"),
        Binding("ctrl+r", "rescan", "rescan"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.extra: list[Path] = []
        self.marked: Row | None = None
        self.mode = "all"
        self._shown = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="runs-top"):
            yield Input(
                placeholder="add a folder to scan for runs (enter)",
                id="runs-add",
                suggester=PathSuggester(dirs_only=True),
            )
            yield Static("", id="runs-note")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="runs-bottom"):
            yield PlotextPlot(id="runs-plot")
            with Vertical(id="runs-compare", classes="-hidden"):
                yield DataTable(id="runs-final", cursor_type="none", show_cursor=False)
        yield Static(
            "↑↓ pick · a attach · m mark for compare · x stop comparing · c curves · ctrl+r rescan",
            id="runs-keys",
        )

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_columns(
            "date", "pair", "domain", "steps", "KD", "CE", "combined", "state", "folder"
        )
        self.query_one("#runs-table", DataTable).border_title = "Runs"
        self.query_one("#runs-plot", PlotextPlot).border_title = "Loss"
        self.query_one("#runs-compare").border_title = "Final losses"
        self.rescan()

    # ---- scanning ---------------------------------------------------------------------------
    def _output(self) -> Path:
        return Path(app_state(self).spec.config.output).expanduser()

    def rescan(self) -> None:
        self._scan(self._output(), list(self.extra), list(app_state(self).known_outputs))

    @work(thread=True, exclusive=True, group="runs-scan", exit_on_error=False)
    def _scan(self, output: Path, extra: list[Path], known: list[Path]) -> None:
        # Plain file reads: fine in a thread (no MLX). A surprise in someone's files must
        # not close the dashboard: say it in the note instead.
        try:
            runs = find_runs(output, extra, known)
        except Exception as e:
            self.app.call_from_thread(self._note, f"cannot scan for runs: {e}", True)
            return
        self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs: list[RunInfo]) -> None:
        table = self.query_one("#runs-table", DataTable)
        current = self.rows[table.cursor_row].label if self.rows and table.row_count else None
        self.rows = [Row(r, d) for r in runs for d in (r.domains or [None])]
        table.clear()
        for i, row in enumerate(self.rows):
            d = row.domain
            f = final_losses(d) if d else {"kd": None, "ce": None, "combined": None}
            table.add_row(
                row.run.date,
                row.run.pair,
                d.name if d else "—",
                str(d.steps) if d else "—",
                _fmt(f["kd"]),
                _fmt(f["ce"]),
                _fmt(f["combined"]),
                STATE_MARKS.get(row.run.state, row.run.state or "—"),
                str(row.run.path),
                key=str(i),
            )
        live = sum(r.live for r in runs)
        self._note(
            f"{len(runs)} run{'s' * (len(runs) != 1)} found"
            + (f", {live} live (a attaches)" if live else "")
            if runs
            else f"no runs yet under {self._output()} (train one, or add a folder)"
        )
        labels = [r.label for r in self.rows]
        if current in labels:
            table.move_cursor(row=labels.index(current))
        self.replot()

    def _note(self, text: str, error: bool = False) -> None:
        note = self.query_one("#runs-note", Static)
        note.update(text)
        note.set_class(error, "error")

    @on(Input.Submitted, "#runs-add")
    def _add_folder(self, event: Input.Submitted) -> None:
        folder = Path(event.value.strip()).expanduser()
        if not event.value.strip():
            return
        if not folder.is_dir():
            self._note(f"{folder} is not a folder", error=True)
            return
        if folder not in self.extra:
            self.extra.append(folder)
        event.input.value = ""
        self.rescan()

    # ---- refresh triggers -----------------------------------------------------------------
    def on_run_completed(self, message: RunCompleted) -> None:
        self.rescan()

    def on_state_changed(self, message: StateChanged) -> None:
        # Our own message passes here on its way up (it bubbles); the app's copies do not.
        if not message.bubble and message.what in ("", "config", "output"):
            self.rescan()

    def on_show(self) -> None:
        # Back on this tab: a run may have finished meanwhile (the first show is the mount).
        if self._shown:
            self.rescan()
        self._shown = True

    # ---- selection and plotting -------------------------------------------------------------
    def selected(self) -> Row | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.rows or not table.row_count:
            return None
        return self.rows[min(table.cursor_row, len(self.rows) - 1)]

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self) -> None:
        row = self.selected()
        status = row.run.status if row else None
        if status is not None and status.state in ("crashed", "stopped", "failed"):
            self._note(f"{status.state}: continue with {status.record.resume_command}")
        self.replot()

    def action_attach(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row.run.status is None:
            self._note(f"{row.run.path} has no run record to follow", error=True)
            return
        self.post_message(AttachRequested(row.run.path))

    def on_resize(self) -> None:
        self.replot()

    def action_mark(self) -> None:
        self.marked = self.selected()
        if self.marked:
            self._note(f"comparing against {self.marked.label}; pick another run")
        self.replot()

    def action_unmark(self) -> None:
        self.marked = None
        self.replot()

    def action_cycle_plot(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self.replot()

    def action_rescan(self) -> None:
        self.rescan()

    def replot(self) -> None:
        plot = self.query_one("#runs-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        row = self.selected()
        compare = self.marked if self.marked and row and self.marked.label != row.label else None
        self.query_one("#runs-compare").set_class(compare is None, "-hidden")
        width = max(10, plot.size.width - 12)  # leave room for the y axis labels
        if row is None or row.domain is None:
            plt.title("no run selected")
            plot.refresh()
            return
        if compare is None:
            keys = ("kd", "ce", "combined") if self.mode == "all" else (self.mode,)
            rows = read_metrics(row.domain.metrics_path)
            for key in keys:
                xs, ys = downsample(*series(rows, key), width)
                if xs:
                    plt.plot(xs, ys, label=LABELS[key], marker="braille")
            plt.title(f"{row.label} · {len(rows)} steps")
        else:
            key = "combined" if self.mode == "all" else self.mode
            for r in (compare, row):
                if r.domain is None:
                    continue
                xs, ys = downsample(*series(read_metrics(r.domain.metrics_path), key), width)
                if xs:
                    plt.plot(xs, ys, label=f"{r.label} {LABELS[key]}", marker="braille")
            plt.title(f"{LABELS[key]}: {compare.label} vs {row.label}")
            self._fill_compare(compare, row)
        plt.xlabel("step")
        plot.refresh()

    def _fill_compare(self, a: Row, b: Row) -> None:
        table = self.query_one("#runs-final", DataTable)
        table.clear(columns=True)
        table.add_columns("", "marked", "selected")
        fa = final_losses(a.domain) if a.domain else {}
        fb = final_losses(b.domain) if b.domain else {}
        for key in ("kd", "ce", "combined"):
            table.add_row(LABELS[key], _fmt(fa.get(key)), _fmt(fb.get(key)))
        table.add_row(
            "steps",
            str(a.domain.steps if a.domain else "—"),
            str(b.domain.steps if b.domain else "—"),
        )
        for role in ("teacher", "student"):  # with weights fingerprints: which models, exactly
            table.add_row(
                role,
                named_model(getattr(a.run, role), getattr(a.run, f"{role}_weights")),
                named_model(getattr(b.run, role), getattr(b.run, f"{role}_weights")),
            )
        for name, pick in (("T", "temperature"), ("alpha", "alpha"), ("rank", "lora_rank")):
            table.add_row(name, str(a.run.config.get(pick, "—")), str(b.run.config.get(pick, "—")))
