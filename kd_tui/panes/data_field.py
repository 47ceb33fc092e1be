"""The Config pane's `data` row: your own data file or folder as one more domain (issue 25).

`data` is a run key of kd.toml (like teacher and student), not a KDConfig field: it has a row
of its own, checked as you type (the path must exist, or be hf:NAME[:split]); every row of the
file is read and checked when a run starts, as `kd distill --data` does.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Static

from kd_core.data_files import is_hf_spec

DATA_ALLOWED = "a folder with train.jsonl, a .jsonl file, hf:NAME[:split], or empty"
DATA_HELP = (
    "Your own data, distilled as one more domain named after it: chat ('messages'), "
    "completions ('prompt' + 'completion'), text or prompts rows. The teacher scores the given "
    "answers (teacher_answers); valid.jsonl, or a seeded 5%, is held out."
)


def check_data(text: str) -> str | None:
    """The data setting `text` stands for (None when empty); ValueError (one line) if bad."""
    value = text.strip()
    if not value:
        return None
    if is_hf_spec(value) or Path(value).expanduser().exists():
        return value
    raise ValueError(f"data: {value} does not exist; use {DATA_ALLOWED}")


class DataRow(Vertical):
    """The `data` setting: an Input whose text is checked with check_data."""

    def __init__(self, value: str | None) -> None:
        super().__init__(id="row-data", classes="field-row")
        self.value = value

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield Label("data", classes="field-name")
            yield Input(self.value or "", id="cfg-data", classes="data-editor")
            yield Static(DATA_ALLOWED, id="err-data", classes="field-note")
        yield Static(DATA_HELP, classes="field-help")

    def on_descendant_focus(self) -> None:
        self.add_class("-editing")

    def on_descendant_blur(self) -> None:
        self.remove_class("-editing")
