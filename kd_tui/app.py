"""kd-tui: the Textual dashboard over the kd engine.

The app owns the shared AppState (`app.state`), the six tabs, the keys, the command palette,
the themes and the event source that runs the trainer. Engine events arrive as EngineEvent
messages (steps wait in the source's queue until the Train pane redraws) and go to the Train
pane; StateChanged from one pane is re-broadcast to the others; a finished run sets
`state.last_output` and broadcasts RunCompleted.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, TabbedContent, TabPane, Tabs

import themes
from kd_core.config import ConfigError, RunSpec
from kd_core.domains import planned_domains
from kd_core.events import (
    Event,
    Paused,
    PhaseStarted,
    RunFailed,
    RunFinished,
    RunStarted,
)
from kd_tui import preferences
from kd_tui.detached import DetachedRun
from kd_tui.engine import EventSource, EventSourceFactory
from kd_tui.messages import (
    AttachRequested,
    EngineEvent,
    RunCompleted,
    StateChanged,
    broadcast_copy,
)
from kd_tui.panes.config import ConfigPane
from kd_tui.panes.train import TrainPane
from kd_tui.run_view import RunView
from kd_tui.state import AppState
from kd_tui.widgets.confirm import ConfirmScreen
from kd_tui.widgets.help_screen import HelpScreen

REPLAY_BATCH = 200  # events taken at once that are a replay (an attach), not a live run's

# (tab id, title, module, class): the contract with the panes' authors.
PANES: tuple[tuple[str, str, str, str], ...] = (
    ("tab-models", "Models", "kd_tui.panes.models", "ModelsPane"),
    ("tab-domains", "Domains", "kd_tui.panes.domains", "DomainsPane"),
    ("tab-config", "Config", "kd_tui.panes.config", "ConfigPane"),
    ("tab-train", "Train", "kd_tui.panes.train", "TrainPane"),
    ("tab-viewer", "Viewer", "kd_tui.panes.viewer", "ViewerPane"),
    ("tab-runs", "Runs", "kd_tui.panes.runs", "RunsPane"),
)


def make_pane(module: str, class_name: str) -> Widget:
    """The pane (a broken pane import fails loudly at start, never hides as a placeholder)."""
    return getattr(importlib.import_module(module), class_name)()


def short_name(model: str) -> str:
    """A model folder shows as its last component in the header; hub ids stay whole."""
    p = Path(model)
    return p.name if (p.is_absolute() or model.startswith(".")) and p.name else model


class KDApp(App[None]):
    """The dashboard."""

    TITLE = "kd"
    CSS_PATH = [Path(__file__).with_name("app.tcss"), themes.TCSS_PATH]
    BINDINGS = [
        *(
            Binding(str(i + 1), f"show_tab('{tab}')", title, show=False)
            for i, (tab, title, _, _) in enumerate(PANES)
        ),
        Binding("t", "start_training", "train"),
        Binding("space", "toggle_pause", "pause/resume"),
        Binding("s", "stop_training", "stop"),
        Binding("r", "resume_training", "resume"),
        Binding("p", "cycle_plot", "plot"),
        Binding("e", "cycle_smoothing", "smooth"),
        Binding("l", "toggle_log_scale", "log y"),
        Binding("ctrl+s", "save_config", "save"),
        Binding("f1", "help", "help"),
    ]

    def __init__(
        self,
        config_path: Path = Path("kd.toml"),
        event_source_factory: EventSourceFactory | None = None,
        *,
        timestamps: bool = True,
        attach: Path | None = None,
    ) -> None:
        super().__init__()
        self.config_path = Path(config_path)
        self.load_error: str | None = None
        try:
            self.state = AppState.load(self.config_path)
        except ConfigError as e:
            # An unreadable kd.toml must not stop the dashboard: say why in one line, use
            # defaults, and never save them over the user's file (AppState.unreadable).
            self.state = AppState(config_path=self.config_path, unreadable=str(e))
            self.load_error = str(e)
        # Runs are their own processes (kd_tui/detached.py): quitting can leave them going.
        self.event_source_factory: EventSourceFactory = event_source_factory or DetachedRun
        self.engine: EventSource | None = None
        self.attach_path = Path(attach).expanduser().absolute() if attach else None
        self.state.known_outputs = preferences.recent_outputs()
        if self.attach_path is not None:
            self.state.known_outputs.insert(0, self.attach_path)
        self.running = False
        self.paused = False
        self._quit_when_ended = False  # the user chose "stop and quit" during a run
        self._theme_ready = False
        self.timestamps = timestamps  # off in snapshot tests: nothing time-dependent in view
        for theme in themes.THEMES:
            self.register_theme(theme)
        self._set_initial_theme(preferences.load_theme_name())

    def _set_initial_theme(self, name: str) -> None:
        """Start in the remembered theme. Set before the app runs, without the watcher: a
        theme change after mount restyles every widget (over a second on a small CPU)."""
        if name not in self.available_themes:
            name = themes.DEFAULT_THEME
        self.set_reactive(KDApp.theme, name)
        dark = self.current_theme.dark
        self.set_class(dark, "-dark-mode", update=False)
        self.set_class(not dark, "-light-mode", update=False)
        self.set_class(True, f"-theme-{name}", update=False)

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(themes.VARIABLE_DEFAULTS)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with TabbedContent(initial="tab-models", id="tabs"):
            for tab_id, title, module, class_name in PANES:
                with TabPane(title, id=tab_id):
                    yield make_pane(module, class_name)
        yield Footer()

    def on_mount(self) -> None:
        self._theme_ready = True  # from now on a theme change is the user's choice
        self._update_header()
        if self.load_error:
            self.notify(
                f"{self.load_error} — showing defaults; the file will not be saved over",
                severity="error",
                timeout=12,
                markup=False,
            )
        elif summary := self.state.bad_summary():
            self.notify(summary, severity="warning", timeout=12, markup=False)
        if self.attach_path is not None:
            self.attach_run(self.attach_path)

    def watch_theme(self, name: str) -> None:
        # Every change, from the palette or a command, is remembered for the next start.
        if self._theme_ready:
            preferences.save_theme_name(name)

    def exit(self, *args: Any, **kwargs: Any) -> None:
        # Kill a running trainer before the panes go away (its events would have no home).
        self._close_engine()
        super().exit(*args, **kwargs)

    def on_unmount(self) -> None:
        self._close_engine()

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()

    # ---- panes ------------------------------------------------------------------------------
    def panes(self) -> list[Widget]:
        return [tp.children[0] for tp in self.query(TabPane) if tp.children]

    @property
    def train_pane(self) -> TrainPane:
        return self.query_one(TrainPane)

    def on_state_changed(self, message: StateChanged) -> None:
        if message.bubble is False:
            return
        self._update_header()
        sender = getattr(message, "_sender", None)
        for pane in self.panes():
            if pane is not sender:
                pane.post_message(broadcast_copy(message))

    def _broadcast(self, message: StateChanged | RunCompleted) -> None:
        for pane in self.panes():
            pane.post_message(broadcast_copy(message))

    def _update_header(self) -> None:
        pair = f"{short_name(self.state.teacher_name)} → {short_name(self.state.student_name)}"
        phase = "idle"
        try:
            view: RunView | None = self.train_pane.view
        except NoMatches:  # before mount, or while closing
            view = None
        if view is not None and view.status != "idle":
            if view.status == "running":
                phase = {
                    "build": "building demo pair",
                    "load": "loading",
                    "teacher": "teacher pass",
                    "student": "training",
                    "eval": "evaluating",
                }.get(view.phase, view.phase)
                if view.domain and view.phase in ("teacher", "student"):
                    phase += f" {view.domain_index}/{len(view.domains)}"
                if view.paused:
                    phase += " (paused)"
            else:
                phase = view.status
        text = f"{pair} · {phase}"
        if self.sub_title != text:
            self.sub_title = text

    # ---- engine events ------------------------------------------------------------------
    def on_engine_event(self, message: EngineEvent) -> None:
        events = [message.event] if message.event is not None else []
        self.handle_engine_events(events)

    def drain_engine(self) -> None:
        """Take the events the source queued (the Train pane calls this when it redraws)."""
        self.handle_engine_events([])

    def handle_engine_events(self, events: list[Event]) -> None:
        if self.engine is not None:
            events = events + self.engine.drain()
        if not events:
            return
        try:
            pane = self.train_pane
        except NoMatches:  # the app is closing: the events have nowhere to go
            return
        for event in events:
            pane.handle_event(event)
            self._after_event(event)
        if len(events) >= REPLAY_BATCH:
            pane.flush(force=True)  # an attach's replay: draw it now, not at the next tick

    def _after_event(self, event: Event) -> None:
        if isinstance(event, Paused):
            self.paused = event.paused
        if isinstance(event, RunFinished):
            self._run_ended()
            output = self.train_pane.view.output or self.state.spec.config.output
            self.state.last_output = Path(output)
            self._broadcast(RunCompleted(self.state.last_output))
            word = "stopped (r resumes)" if event.stopped else "finished"
            self.notify(f"run {word}", timeout=4)
        elif isinstance(event, RunFailed):
            self._run_ended()
            self.notify(f"run failed: {event.error}", severity="error", timeout=10, markup=False)
        if isinstance(event, RunStarted | PhaseStarted | Paused | RunFinished | RunFailed):
            self._update_header()

    def _run_ended(self) -> None:
        self.running = False
        self.paused = False
        self.refresh_bindings()
        if self._quit_when_ended:
            self.exit()

    # ---- questions before losing work -------------------------------------------------------
    async def action_quit(self) -> None:
        """Quitting during a run asks: stop it with a checkpoint first, leave it running (a
        detached run outlives the dashboard), or stay. A run this dashboard only attached to
        is simply left: it was never ours to stop."""
        if not self.running or self.engine is None:
            self.exit()
            return
        detached = bool(getattr(self.engine, "detached", False))
        if detached and not getattr(self.engine, "started_here", True):
            self.exit()
            return

        def answered(answer: str | None) -> None:
            if answer == "leave":
                self.exit()
            elif answer == "stop" and self.running and self.engine is not None:
                self._quit_when_ended = True
                self.engine.stop()
                self.notify("stopping after this step (a checkpoint is saved), then quitting…")

        answers = [("stop", "Stop with a checkpoint and quit")]
        if detached:
            output = self.train_pane.view.output or self.state.spec.config.output
            text = (
                "This dashboard started the run. Stop it after this step (a checkpoint is "
                "saved, r resumes it later) and quit, or quit and leave it running (follow it "
                f"again with kd-tui --attach {output})?"
            )
            answers.append(("leave", "Quit, leave it running"))
        else:
            text = (
                "Quitting ends the trainer. Stop it after this step (a checkpoint is saved, "
                "r resumes it later) and quit, or keep the dashboard open?"
            )
        answers.append(("cancel", "Keep running" if not detached else "Cancel"))
        self.push_screen(ConfirmScreen("A run is in progress", text, answers), answered)

    # ---- following runs in their own processes ------------------------------------------
    def on_attach_requested(self, message: AttachRequested) -> None:
        self.attach_run(message.output)

    def attach_run(self, output: Path) -> bool:
        """Follow the run in `output` in the Train pane: its events replay, then go live;
        space and s pause and stop it. A run started here keeps the pane until it ends."""
        from kd_core.run.record import read_record

        if self.running and getattr(self.engine, "started_here", True):
            self.notify("a run started here is in progress", severity="warning")
            return False
        record = read_record(output)
        if record is None:
            self.notify(f"no run in {output}", severity="error", markup=False)
            return False
        self.detach_run()
        engine = DetachedRun(self)
        self.engine = engine
        self.running, self.paused = True, False
        self.refresh_bindings()
        self.train_pane.begin_attach(output, f" · pid {record.pid} on {record.host}")
        self.action_show_tab("tab-train")
        engine.attach(output)
        self._remember(output)
        self._update_header()
        return True

    def detach_run(self) -> None:
        """Stop following an attached run (it goes on); nothing to do for a run started here."""
        if self.engine is not None and not getattr(self.engine, "started_here", True):
            self.engine.close()
            self.running = self.paused = False
            self.refresh_bindings()

    def _remember(self, output: Path) -> None:
        output = Path(output).expanduser().absolute()
        preferences.remember_output(output)
        known = self.state.known_outputs
        if output not in known:
            known.insert(0, output)

    def _earlier_checkpoints(self) -> list[Path]:
        """Checkpoint folders a fresh start (not a resume) would delete."""
        spec = self.state.spec
        names = planned_domains(spec.domains, spec.domain_files, spec.data)
        output = Path(spec.config.output).expanduser()
        return sorted(c for name in names for c in (output / name).glob("checkpoint_*"))

    # ---- actions ------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("start_training", "resume_training"):
            return not self.running
        if action in ("toggle_pause", "stop_training"):
            return self.running
        return True

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        focused = self.focused
        if focused is not None and tab not in {a.id for a in focused.ancestors}:
            # Hiding a focused widget makes Textual focus a sibling of it, which is in the
            # same (hidden) pane, and a pane whose widget gets focus is made active again:
            # the tab would not change. Take the focus to the tab bar first.
            self.screen.set_focus(tabs.query_one(Tabs), scroll_visible=False)  # (now)
        tabs.active = tab

    def action_start_training(self) -> None:
        found = [] if self.running else self._earlier_checkpoints()
        if not found:
            self.start_run(resume=False)
            return
        folders = sorted({str(c.parent) for c in found})

        def answered(answer: str | None) -> None:
            if answer in ("over", "resume"):
                self.start_run(resume=answer == "resume")

        self.push_screen(
            ConfirmScreen(
                "An earlier run is in the output folder",
                f"{len(found)} checkpoint(s) in {', '.join(folders)}. Starting over deletes "
                "them; resuming continues from the newest.",
                [
                    ("resume", "Resume it"),
                    ("over", "Start over (delete them)"),
                    ("cancel", "Cancel"),
                ],
            ),
            answered,
        )

    def action_resume_training(self) -> None:
        self.start_run(resume=True, spec=self._attached_run_spec())

    def _attached_run_spec(self) -> RunSpec | None:
        """After following a run started elsewhere, r continues *that* run, from the settings
        saved in its folder, not the one in the Config tab."""
        from kd_core.config_file import load_toml
        from kd_core.run.record import CONFIG_FILE, run_dir

        engine = self.engine
        output = getattr(engine, "output", None)
        if self.running or output is None or getattr(engine, "started_here", True):
            return None
        try:
            return load_toml(run_dir(output) / CONFIG_FILE)
        except (ConfigError, OSError):
            return None

    def start_run(self, resume: bool = False, spec: RunSpec | None = None) -> bool:
        """Start (or resume) a run of `spec`, by default the dashboard's own settings."""
        if self.running:
            self.notify("a run is already in progress", severity="warning")
            return False
        config_errors = self._config_errors() if spec is None else []
        spec = spec or self.state.spec
        if config_errors:
            self.action_show_tab("tab-config")
            self.notify(
                f"fix the configuration first: {config_errors[0]}", severity="error", markup=False
            )
            return False
        if self.engine is None or not getattr(self.engine, "started_here", True):
            self.detach_run()  # an attached run goes on; this dashboard starts its own
            self.engine = self.event_source_factory(self)
        self.running = True
        self.paused = False
        self.refresh_bindings()
        self.train_pane.begin_run(resume, spec)
        self.action_show_tab("tab-train")
        try:
            self.engine.start(spec, resume)
        except Exception as e:  # e.g. the interpreter cannot be started
            self.handle_engine_events([RunFailed(f"cannot start the trainer: {e}")])
            return False
        self._remember(Path(spec.config.output))
        self._update_header()
        return True

    def _config_errors(self) -> list[str]:
        return [e for pane in self.query(ConfigPane) for e in pane.errors.values()]

    def action_toggle_pause(self) -> None:
        if not self.running or self.engine is None:
            return
        if self.paused:
            self.engine.resume()
            self.paused = False
        else:
            self.engine.pause()
            self.paused = True

    def action_stop_training(self) -> None:
        if self.running and self.engine is not None:
            self.engine.stop()
            self.notify("stopping after this step (a checkpoint is saved)…", timeout=4)

    def action_cycle_plot(self) -> None:
        self.train_pane.cycle_plot()  # the plot's title names the series shown

    def action_cycle_smoothing(self) -> None:
        self.train_pane.cycle_smoothing()  # the title names the weight ("smoothed 0.9")

    def action_toggle_log_scale(self) -> None:
        self.train_pane.toggle_log_scale()  # the title says "log"

    def action_save_config(self) -> None:
        panes = list(self.query(ConfigPane))
        if panes:
            panes[0].save()
            return
        try:
            path = self.state.save()
        except (OSError, ConfigError) as e:
            self.notify(f"not saved: {e}", severity="error", markup=False)
            return
        self.notify(f"saved {path}", markup=False)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_set_theme(self, name: str) -> None:
        self.theme = name

    def action_toggle_light_dark(self) -> None:
        dark = self.current_theme.dark
        self.theme = themes.KD_LIGHT.name if dark else themes.KD_DARK.name

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Start training", "Train with the current settings (t)", self.action_start_training
        )
        yield SystemCommand(
            "Pause / resume training", "Hold or continue the run (space)", self.action_toggle_pause
        )
        yield SystemCommand(
            "Stop training", "Stop after this step with a checkpoint (s)", self.action_stop_training
        )
        yield SystemCommand(
            "Resume stopped run",
            "Continue from the last checkpoint (r)",
            self.action_resume_training,
        )
        yield SystemCommand("Save config", "Write kd.toml (ctrl+s)", self.action_save_config)
        yield SystemCommand(
            "Cycle plot series", "all → KD → CE → combined (p)", self.action_cycle_plot
        )
        yield SystemCommand(
            "Cycle plot smoothing",
            "EMA weight 0 (raw) → 0.6 → 0.9 → 0.97, per domain (e)",
            self.action_cycle_smoothing,
        )
        yield SystemCommand(
            "Toggle plot log scale", "linear ↔ log y axis (l)", self.action_toggle_log_scale
        )
        yield SystemCommand(
            "Switch theme (light/dark)",
            "Toggle kd-dark and kd-light",
            self.action_toggle_light_dark,
        )
        for theme in themes.THEMES:
            yield SystemCommand(
                f"Theme: {theme.name}",
                "Use this theme (remembered)",
                lambda name=theme.name: self.action_set_theme(name),
            )
        for i, (tab, title, _, _) in enumerate(PANES):
            yield SystemCommand(
                f"Go to {title}",
                f"Show the {title} tab ({i + 1})",
                lambda tab=tab: self.action_show_tab(tab),
            )
        yield SystemCommand("Help", "Every key (f1)", self.action_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kd-tui",
        description="Dashboard for true knowledge distillation on MLX: pick the teacher and "
        "student, edit the hyper-parameters, train with live loss curves, compare outputs.",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        default="kd.toml",
        help="kd.toml to edit and train from (default: ./kd.toml; created on save)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel in N local processes (mlx.launch, ring backend); "
        "the dashboard follows process 0",
    )
    p.add_argument(
        "--attach",
        metavar="PATH",
        help="follow the run in this output folder (live or not) in the Train tab",
    )
    g = p.add_argument_group("the dashboard in a browser")
    g.add_argument(
        "--serve",
        action="store_true",
        help="serve the dashboard over HTTP (textual-serve): one dashboard per browser tab",
    )
    g.add_argument("--host", default="localhost", help="address to bind (default: localhost)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument(
        "--token",
        help="the access token every request must carry; required off localhost, so one is "
        "generated and printed when not given",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes: expected a whole number from 1, got {args.processes}")
    if args.serve:
        from kd_tui.serve import serve

        return serve(args, parser)
    app = KDApp(config_path=Path(args.config), attach=Path(args.attach) if args.attach else None)
    app.state.processes = args.processes
    app.run()
    return 0
