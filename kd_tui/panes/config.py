"""Config pane: every KDConfig field, grouped, validated as you type, saved to kd.toml.

Each field is an Input (a Select for fields with choices) whose text goes through
kd_core.config.coerce_value on every change: a good value goes into `app.state` at once, a
bad one shows its one-line reason beside the field and the state keeps the last good value.
Teacher and student are chosen in the Models pane.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Button, Input, Label, Select, Static

from kd_core.config import CONFIG_FIELDS, ConfigError, allowed_text, coerce_value, field_help
from kd_core.files.toml_file import same_value
from kd_tui.messages import StateChanged
from kd_tui.panes.data_field import DATA_ALLOWED, DataRow, check_data
from kd_tui.state import app_state
from kd_tui.widgets import set_text

GROUPS: tuple[tuple[str, str], ...] = (
    ("kd", "Knowledge distillation"),
    ("divergence", "Divergence and on-policy"),
    ("teacher", "Teacher pass"),
    ("lora", "LoRA"),
    ("training", "Training"),
    ("data", "Your data"),
    ("output", "Reporting and outputs"),
)

ANNOUNCE_DELAY_S = 0.3

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "quick": (
        "quick demo",
        {
            "num_iters": 20,
            "max_tokens": 32,
            "batch_size": 2,
            "steps_per_report": 5,
            "steps_per_save": 20,
        },
    ),
    "recommended": ("recommended", {"temperature": 2.0, "alpha": 0.7, "lora_rank": 16}),
    "pure-kd": ("pure KD", {"alpha": 1.0}),
    "ce-only": ("CE only", {"alpha": 0.0}),
}


def all_groups() -> list[tuple[str, str]]:
    """GROUPS, plus any group a newer KDConfig uses that this list does not know yet."""
    known = {g for g, _ in GROUPS}
    extra = [
        g
        for g in dict.fromkeys(f.metadata.get("group", "training") for f in CONFIG_FIELDS.values())
        if g not in known
    ]
    return list(GROUPS) + [(g, g.replace("_", " ").capitalize()) for g in extra]


def fields_of(group: str) -> list[str]:
    return [
        name for name, f in CONFIG_FIELDS.items() if f.metadata.get("group", "training") == group
    ]


def text_of(value: Any) -> str:
    """How a value is shown in its Input (repr-free: 0.0001 as 0.0001, 1e-05 stays short)."""
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else repr(value)
    return str(value)


class FieldRow(Vertical):
    """One setting: name, editor, error (or what is allowed), help.

    `bad` is a value kd.toml holds that is not allowed, as the file writes it: it is shown
    as it is (an Input holds its text; a Select is left blank with it as the prompt) for the
    user to fix, never replaced by a default behind their back."""

    def __init__(self, name: str, value: Any, bad: str | None = None) -> None:
        super().__init__(id=f"row-{name}", classes="field-row")
        self.field_name = name
        self.value = value
        self.bad = bad

    def compose(self) -> ComposeResult:
        name = self.field_name
        choices = CONFIG_FIELDS[name].metadata["choices"]
        with Horizontal(classes="field-line"):
            yield Label(name, classes="field-name")
            if choices:
                yield Select(
                    [(c, c) for c in choices],
                    value=self.value if self.bad is None else Select.NULL,
                    allow_blank=self.bad is not None,
                    prompt=self.bad or "Select",
                    id=f"cfg-{name}",
                    classes="field-editor",
                )
            else:
                yield Input(
                    text_of(self.value) if self.bad is None else self.bad,
                    id=f"cfg-{name}",
                    classes="field-editor",
                    select_on_focus=False,
                )
            note = Static(allowed_text(name), id=f"err-{name}", classes="field-note")
            note._kd_text_key = allowed_text(name)  # type: ignore[attr-defined]  # (set_text)
            yield note
        yield Static(field_help(name), classes="field-help")

    # A class rather than :focus-within in the .tcss: Textual does not restyle the row's
    # other children when only the ancestor's pseudo-class changes.
    def on_descendant_focus(self) -> None:
        self.add_class("-editing")

    def on_descendant_blur(self) -> None:
        self.remove_class("-editing")


class ConfigPane(Container):
    """The Config tab."""

    def __init__(self) -> None:
        super().__init__(id="config-pane")
        self.errors: dict[str, str] = {}
        # The state's value when each error arose: a state that still holds it has not been
        # changed elsewhere, so the field keeps the user's (bad) text rather than follow it.
        self._error_base: dict[str, Any] = {}
        self.bad_text: dict[str, str] = {}  # kd.toml's bad values, as the file writes them
        self.dirty = False
        self.built = False  # the fields are composed the first time the tab is shown
        self.ready = False  # ... and are mounted (tests wait on this)
        self._announce_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="config-bar"):
            yield Label("Presets", id="presets-label")
            for key, (label, _) in PRESETS.items():
                yield Button(label, id=f"preset-{key}", classes="preset", compact=True)
            yield Static("", id="config-status")
            yield Button("Save", id="config-save", variant="primary", compact=True)
        yield VerticalScroll(id="config-fields")

    def on_mount(self) -> None:
        # kd.toml's bad values are errors from the start (before the tab is first shown):
        # saving and training are refused until they are fixed, as for a typed error.
        state = app_state(self)
        for bad in state.bad:
            if bad.key in CONFIG_FIELDS:
                self.errors[bad.key] = bad.error
                self._error_base[bad.key] = getattr(state.spec.config, bad.key)
                self.bad_text[bad.key] = bad.source
        self._show_status()

    async def on_show(self) -> None:
        # A hundred-odd widgets that most starts of the app never show: they are built on
        # the first visit to the tab (a third of the app's start-up otherwise).
        if self.built:
            return
        self.built = True
        spec = app_state(self).spec
        groups = []
        for group, title in all_groups():
            rows: list[Vertical] = [DataRow(spec.data)] if group == "data" else []
            rows += [
                FieldRow(name, getattr(spec.config, name), self.bad_text.get(name))
                for name in fields_of(group)
            ]
            box = Vertical(*rows, classes="config-group", id=f"group-{group}")
            box.border_title = title
            groups.append(box)
        await self.query_one("#config-fields", VerticalScroll).mount_all(groups)
        self.ready = True
        for name, error in list(self.errors.items()):
            self._show_field(name, error)

    # ---- editing ------------------------------------------------------------------------
    @on(Input.Changed, ".field-editor")
    def _input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_field(self._name_of(event.input.id), event.value)

    @on(Input.Changed, ".data-editor")
    def _data_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            value = check_data(event.value)
        except ValueError as e:
            self.errors["data"] = str(e)
            self._show_field("data", str(e))
            return
        self.errors.pop("data", None)
        self._show_field("data", None)
        state = app_state(self)
        if state.spec.data != value:
            state.spec.data = value
            self.dirty = True
            self._announce_soon()
        self._show_status()

    @on(Select.Changed, ".field-editor")
    def _select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL:
            return
        self.set_field(self._name_of(event.select.id), str(event.value))

    @staticmethod
    def _name_of(widget_id: str | None) -> str:
        return (widget_id or "").removeprefix("cfg-")

    def set_field(self, name: str, text: str) -> bool:
        """Validate `text` for field `name`; on success store it in the state."""
        try:
            value = coerce_value(name, text)
        except ConfigError as e:
            if name not in self.errors:
                self._error_base[name] = getattr(app_state(self).spec.config, name)
            self.errors[name] = str(e)
            self._show_field(name, str(e))
            return False
        self.errors.pop(name, None)
        self._error_base.pop(name, None)
        if self.bad_text.pop(name, None) is not None:
            self.dirty = True  # fixed here, but kd.toml still holds the bad value
        self._show_field(name, None)
        state = app_state(self)
        if getattr(state.spec.config, name) != value:
            state.spec.config = replace(state.spec.config, **{name: value})
            self.dirty = True
            self._announce_soon()
        self._show_status()
        return True

    def _show_field(self, name: str, error: str | None) -> None:
        """The field's note: its error, or what it accepts (the row turns red on error)."""
        if self.ready:
            note = self.query_one(f"#err-{name}", Static)
            allowed = DATA_ALLOWED if name == "data" else allowed_text(name)
            set_text(note, error or allowed, layout=True)  # errors may wrap
            self.query_one(f"#row-{name}").set_class(error is not None, "-invalid")
        self._show_status()

    def _announce_soon(self) -> None:
        """Tell the other panes once typing pauses: the state is current at every keystroke,
        but a pane that rescans on a change should not do it per key."""
        if self._announce_timer is not None:
            self._announce_timer.stop()
        self._announce_timer = self.set_timer(ANNOUNCE_DELAY_S, self.announce)

    def announce(self) -> None:
        if self._announce_timer is not None:
            self._announce_timer.stop()
            self._announce_timer = None
        self.post_message(StateChanged("config"))

    def apply_preset(self, key: str) -> None:
        label, values = PRESETS[key]
        for name, value in values.items():
            if self.ready:
                self._set_editor(name, value)
            self.set_field(name, text_of(value))
        self.announce()
        self.notify(f"preset “{label}” applied", timeout=2)

    def _set_editor(self, name: str, value: Any) -> None:
        editor = self.query_one(f"#cfg-{name}")
        if isinstance(editor, Select):
            with editor.prevent(Select.Changed):
                editor.value = value
        elif isinstance(editor, Input):
            with editor.prevent(Input.Changed):
                editor.value = text_of(value)

    def sync_from_state(self) -> None:
        """Show the state's values (another pane or a preset changed them), keeping fields
        the user is in the middle of typing (their text already means the same value)."""
        if not self.ready:  # not built yet: the fields will be made from the state
            self._show_status()
            return
        spec = app_state(self).spec
        data_input = self.query_one("#cfg-data", Input)
        if "data" not in self.errors and (data_input.value.strip() or None) != spec.data:
            with data_input.prevent(Input.Changed):
                data_input.value = spec.data or ""
        cfg = spec.config
        for name in CONFIG_FIELDS:
            value = getattr(cfg, name)
            if name in self.errors and same_value(value, self._error_base.get(name)):
                continue  # the user's text and its error stay until they fix it
            editor = self.query_one(f"#cfg-{name}")
            if isinstance(editor, Input):
                try:
                    same = coerce_value(name, editor.value) == value
                except ConfigError:
                    same = False
                if not same:
                    self._set_editor(name, value)
                    self.errors.pop(name, None)
                    self._error_base.pop(name, None)
                    self.query_one(f"#row-{name}").remove_class("-invalid")
                    set_text(
                        self.query_one(f"#err-{name}", Static), allowed_text(name), layout=True
                    )
            elif editor.value != value:  # type: ignore[attr-defined]
                self._set_editor(name, value)
                if self.errors.pop(name, None) is not None:
                    self._error_base.pop(name, None)
                    self._show_field(name, None)
        self._show_status()

    def on_state_changed(self, message: StateChanged) -> None:
        if message.bubble is False:  # the app's broadcast, not our own message going up
            self.sync_from_state()

    # ---- saving (ctrl+s is the app's binding: it saves from every tab) -----------------
    def save(self) -> bool:
        if self.errors:
            first = next(iter(self.errors.values()))
            self.notify(f"not saved: {first}", severity="error", markup=False)
            return False
        state = app_state(self)
        try:
            path = state.save()
        except (OSError, ConfigError) as e:
            self.notify(f"not saved: {e}", severity="error", markup=False)
            return False
        self.dirty = False
        self._show_status()
        self.notify(f"saved {path}", timeout=3, markup=False)
        return True

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        bid = event.button.id or ""
        if bid == "config-save":
            self.save()
        elif bid.startswith("preset-"):
            self.apply_preset(bid.removeprefix("preset-"))

    def _show_status(self) -> None:
        status = self.query_one("#config-status", Static)
        if self.errors:
            text, state = f"✗ {len(self.errors)} to fix", "-error"
        elif self.dirty:
            text, state = "● unsaved (ctrl+s)", "-dirty"
        else:
            # The file's name only: the full path is in the save notice (and snapshots of
            # this pane must not depend on where the test's folder is).
            text, state = f"in {app_state(self).config_path.name}", ""
        set_text(status, text)
        for cls in ("-error", "-dirty"):  # a class change restyles: only when it changes
            if status.has_class(cls) != (cls == state):
                status.set_class(cls == state, cls)
