"""F1: every key of the dashboard on one screen."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("1 … 6", "Models · Domains · Config · Train · Viewer · Runs"),
    ("t", "start training with the current settings"),
    ("space", "pause / resume the run"),
    ("s", "stop the run (a checkpoint is saved)"),
    ("r", "resume a stopped run from its checkpoint"),
    ("p", "plot: all → KD → CE → combined"),
    ("e", "plot smoothing (EMA, per domain): raw → 0.6 → 0.9 → 0.97"),
    ("l", "plot y axis: linear ↔ log"),
    ("ctrl+s", "save the configuration to kd.toml"),
    ("ctrl+p", "command palette (every action, themes, tabs)"),
    ("tab / shift+tab", "move between fields"),
    ("f1", "this help"),
    ("a (Runs tab)", "attach: follow the selected run in Train (live or not)"),
    ("ctrl+q", "quit (a run started here: stop it, leave it running, or cancel)"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "close"),
        Binding("f1", "dismiss", "close"),
        Binding("q", "dismiss", "close", show=False),
    ]

    def compose(self) -> ComposeResult:
        width = max(len(key) for key, _ in KEYS) + 2
        text = Text()
        for key, what in KEYS:
            text.append(f"{key:<{width}}", style="bold")
            text.append(what + "\n")
        text.rstrip()
        with Vertical(id="help-box"):
            yield Static("kd — keys", id="help-title")
            yield Static(text, id="help-keys")
            yield Static("esc or f1 closes this help", id="help-foot")
