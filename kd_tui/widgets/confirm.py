"""A question with a few answers, asked before the dashboard does something a user may regret
(quitting during a run, deleting an earlier run's checkpoints)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

CANCEL = "cancel"


class ConfirmScreen(ModalScreen[str]):
    """Dismisses with the id of the answer chosen; escape is always `cancel`."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str, message: str, answers: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text, self.message = title, message
        self.answers = answers  # (id, label); the first is the default (focused)

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.title_text, id="confirm-title")
            yield Static(self.message, id="confirm-message", markup=False)
            with Horizontal(id="confirm-buttons"):
                for i, (answer, label) in enumerate(self.answers):
                    variant = "primary" if i == 0 else "default"
                    yield Button(label, id=f"answer-{answer}", variant=variant, compact=True)

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "").removeprefix("answer-") or CANCEL)

    def action_cancel(self) -> None:
        self.dismiss(CANCEL)
