"""Train pane: where a run stands at a glance — phase, progress, loss curves, domains, log.

Engine events arrive through the app (`handle_event`), update a RunView and, at most, queue
a log line. Everything is drawn by `flush()`: on a timer (4 times a second, less when drawing
gets expensive) and at once on phase changes and at the end of a run, so the cost of a step
event is constant and the trainer's reporting rate never drives the UI's work.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Label, ProgressBar, RichLog, Static

from kd_core.config import RunSpec
from kd_core.domains import planned_domains
from kd_core.events import (
    PHASE_WORDS,
    Event,
    PhaseStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    fmt_time,
)
from kd_tui.messages import StateChanged
from kd_tui.run_view import LogLine, RunView
from kd_tui.state import app_state
from kd_tui.widgets import set_text
from kd_tui.widgets.domain_list import DomainList
from kd_tui.widgets.loss_plot import LossPlot
from kd_tui.widgets.now_panel import NowPanel

# The plot and figures redraw at most 4 times a second. When redrawing costs the UI process
# more than CPU_BUDGET of a core (a slow or busy machine, where the trainer needs every
# cycle), the interval grows up to MAX_FLUSH_SECONDS, and shrinks back when it is cheap.
FLUSH_SECONDS = 0.25
MAX_FLUSH_SECONDS = 1.0
CPU_BUDGET = 0.04
LEVEL_COLORS = {"warning": "warning", "error": "error", "success": "success"}


def show(widget: Static, visible: bool) -> None:
    if widget.display != visible:  # toggling display re-arranges the screen: only on change
        widget.display = visible


class TrainPane(Container):
    """The Train tab."""

    def __init__(self) -> None:
        super().__init__(id="train-pane")
        self.view = RunView()
        self._shown_version = -1
        self.flushes = 0
        self.events_seen = 0  # tests wait on this instead of sleeping
        self._pending_log: list[Text] = []
        self.flush_interval = FLUSH_SECONDS
        self._cpu_mark = (time.perf_counter(), time.process_time())

    def compose(self) -> ComposeResult:
        yield Static("", id="train-banner")
        with Horizontal(id="phase-row", classes="progress-row"):
            yield Label("", id="phase-text", classes="row-text")
            yield ProgressBar(total=1, show_eta=False, id="phase-bar")
            yield Label("", id="phase-count", classes="row-count")
        with Horizontal(id="overall-row", classes="progress-row"):
            yield Label("all domains", id="overall-text", classes="row-text")
            yield ProgressBar(total=1, show_eta=False, id="overall-bar")
            yield Label("", id="overall-count", classes="row-count")
        with Horizontal(id="train-main"):
            yield LossPlot(self.view.series, id="loss-plot")
            yield NowPanel(id="now")
        yield Static("", id="train-summary")
        with Horizontal(id="train-bottom"):
            yield DomainList(id="domain-list")
            with Vertical(id="log-box"):
                yield RichLog(id="train-log", wrap=True, markup=False, max_lines=2000, min_width=20)

    def on_mount(self) -> None:
        self.query_one("#log-box").border_title = "Log"
        self.query_one("#train-summary").border_title = "Summary"
        self._show_idle_domains()
        self.flush(force=True)
        self.set_timer(self.flush_interval, self._tick)

    def _tick(self) -> None:
        drain = getattr(self.app, "drain_engine", None)
        if drain is not None:
            drain()  # queued step events arrive here, a batch per redraw
        self.flush()
        wall, cpu = time.perf_counter(), time.process_time()
        share = (cpu - self._cpu_mark[1]) / max(1e-6, wall - self._cpu_mark[0])
        self._cpu_mark = (wall, cpu)
        if self.view.status == "running" and share > CPU_BUDGET:
            self.flush_interval = min(MAX_FLUSH_SECONDS, self.flush_interval * 1.5)
        elif share < CPU_BUDGET / 2:
            self.flush_interval = max(FLUSH_SECONDS, self.flush_interval / 1.5)
        self.set_timer(self.flush_interval, self._tick)

    # ---- the app calls these ------------------------------------------------------------
    def begin_run(self, resume: bool, spec: RunSpec | None = None) -> None:
        spec = spec or app_state(self).spec
        self.view.reset(
            planned_domains(spec.domains, spec.domain_files, spec.data),
            spec.config.to_dict(),
            keep_series=resume,
        )
        self.view.status = "running"
        self.view.phase_message = "starting the trainer…"
        self.query_one(LossPlot).set_series(self.view.series, self.view.boundaries)
        word = "resuming the stopped run" if resume else "starting a run"
        pair = f"{spec.teacher or 'demo-teacher'} → {spec.student or 'demo-student'}"
        self.log_line(LogLine(f"── {word}: {pair} ──", "success"))
        self.flush(force=True)

    def begin_attach(self, output: Path, record: str) -> None:
        """Following a run that lives in its own process: its events replay from the first,
        so the view starts empty (RunStarted brings its domains and settings)."""
        self.view.reset()
        self.view.status = "running"
        self.view.phase_message = "reading the run's events…"
        self.query_one(LossPlot).set_series(self.view.series, self.view.boundaries)
        self.log_line(LogLine(f"── attached to {output}{record} ──", "success"))
        self.flush(force=True)

    def handle_event(self, event: Event) -> None:
        self.events_seen += 1
        line = self.view.apply(event)
        if line is not None:
            self.log_line(line)
        if isinstance(event, RunStarted | PhaseStarted | RunFinished | RunFailed):
            self.flush()  # phase changes and the end of a run show at once

    def cycle_plot(self) -> str:
        return self.query_one(LossPlot).cycle_mode()

    def cycle_smoothing(self) -> float:
        return self.query_one(LossPlot).cycle_smoothing()

    def toggle_log_scale(self) -> bool:
        return self.query_one(LossPlot).toggle_log()

    def log_line(self, line: LogLine) -> None:
        text = Text()
        if getattr(self.app, "timestamps", True):
            text.append(time.strftime("%H:%M:%S "), style="dim")
        style = "dim" if line.level == "dim" else ""
        var = LEVEL_COLORS.get(line.level)
        if var:
            style = self.app.theme_variables.get(var, "") or style
        text.append(line.text, style=style)
        # Written by flush(): every write re-arranges the screen, so lines go out in batches.
        self._pending_log.append(text)

    def on_state_changed(self, message: StateChanged) -> None:
        if self.view.status == "idle":
            self._show_idle_domains()
            self.flush(force=True)

    # ---- drawing ------------------------------------------------------------------------
    def _show_idle_domains(self) -> None:
        spec = app_state(self).spec
        self.view.reset(
            planned_domains(spec.domains, spec.domain_files, spec.data),
            spec.config.to_dict(),
            keep_series=True,
        )

    def flush(self, force: bool = False) -> None:
        """Redraw from the RunView if it changed (called by the timer)."""
        if self._pending_log:
            log = self.query_one("#train-log", RichLog)
            for text in self._pending_log:
                log.write(text)
            self._pending_log.clear()
        plot = self.query_one(LossPlot)
        plot.boundaries = self.view.boundaries
        plot.replot()
        if not force and self.view.version == self._shown_version:
            return
        self._shown_version = self.view.version
        self.flushes += 1
        v = self.view
        self._show_phase()
        overall = self.query_one("#overall-bar", ProgressBar)
        overall.update(total=max(1, v.total_steps), progress=min(v.steps_done, v.total_steps))
        eta = f" · ETA {fmt_time(v.overall_eta)}" if v.status == "running" else ""
        set_text(
            self.query_one("#overall-count", Label),
            f"{v.steps_done}/{v.total_steps}{eta}" if v.total_steps else "",
        )
        self.query_one(NowPanel).show(
            v.last_step, v.series, v.config, v.paused, since_x=v.domain_start_x
        )
        self.query_one(DomainList).show(list(v.domains.values()))
        self._show_end()

    def _show_phase(self) -> None:
        v = self.view
        text = self.query_one("#phase-text", Label)
        bar = self.query_one("#phase-bar", ProgressBar)
        count = self.query_one("#phase-count", Label)
        if v.status == "idle":
            set_text(text, f"Ready · press t to train {len(v.domains)} domain(s)")
            bar.update(total=1, progress=0)
            set_text(count, "")
            return
        if v.status in ("finished", "stopped", "failed"):
            set_text(text, self._end_text())
            if v.phase_total > 0:
                bar.update(total=v.phase_total, progress=min(v.phase_done, v.phase_total))
                set_text(count, f"{v.phase_done}/{v.phase_total}")
            return
        word = PHASE_WORDS.get(v.phase, v.phase)
        where = ""
        if v.domain and v.phase in ("teacher", "student"):
            where = f' · domain {v.domain_index}/{len(v.domains)} "{v.domain}"'
        message = f" · {v.phase_message}" if v.phase_message and v.phase != "student" else ""
        last = v.last_step
        if v.phase == "student" and last is not None and last.on_policy:
            message = (
                f" · on-policy: the student samples ({last.sample_tokens_per_second:,.0f} "
                "tok/s), the teacher scores"
            )
        paused = " · ⏸ paused" if v.paused else ""
        set_text(text, f"{word}{where}{message}{paused}")
        if v.phase_total > 0:
            bar.update(total=v.phase_total, progress=min(v.phase_done, v.phase_total))
            set_text(count, f"{v.phase_done}/{v.phase_total} · ETA {fmt_time(v.phase_eta)}")
        else:
            bar.update(total=1, progress=0)
            set_text(count, "")

    def _end_text(self) -> str:
        v = self.view
        if v.status == "finished":
            return f"✓ finished · {len(v.results)} domain(s) trained"
        if v.status == "stopped":
            where = ""
            if v.last_step is not None:
                where = f" at {v.last_step.domain} step {v.last_step.step}"
            return f"■ stopped{where} · r resumes from the checkpoint"
        during = PHASE_WORDS.get(v.phase, v.phase)
        return f"✗ failed during {during}" + (f' "{v.domain}"' if v.domain else "")

    def _show_end(self) -> None:
        v = self.view
        banner = self.query_one("#train-banner", Static)
        summary = self.query_one("#train-summary", Static)
        if v.status == "failed":
            set_text(banner, f"✗ Run failed: {v.error}", layout=True)
        show(banner, v.status == "failed")
        if v.status in ("finished", "stopped") and (v.results or v.status == "finished"):
            title = "Run finished" if v.status == "finished" else "Run stopped (r resumes)"
            summary.border_title = title
            set_text(summary, "\n".join(v.summary_lines()), layout=True)
            show(summary, True)
        else:
            show(summary, False)
