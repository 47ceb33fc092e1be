"""Domains pane: pick the domains a run trains, read their prompts, edit and add custom ones.

Keys in the domain list: ↑/↓ move (the right side shows that domain) · space picks /
unpicks · delete drops a custom domain from the run (its file stays). Type a prompts file
path in the box below the list + enter to add a domain (its name is the file's stem).

A domain's prompts are a list, and the box under it holds the highlighted prompt whole: the
editor edits a *prompt*, not a line, so a JSON-lines prompt over several lines stays one
prompt. In a custom domain: enter (or a click) edits the prompt, esc goes back to the list,
n adds a prompt after the highlighted one, delete removes it, ctrl+s saves the file in its
own format (kd_core/domains/prompt_file.py: JSON lines keep every field and their order,
unchanged prompts are written back byte for byte, nothing changed is nothing written).
Esc in the add box goes back to the domain list, so the number keys switch tabs again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import Input, Label, OptionList, SelectionList, Static, TextArea
from textual.widgets.selection_list import Selection

from kd_core.data_files import DataFileError, read_data
from kd_core.data_files.domain import domain_name
from kd_core.domains import (
    BUILTIN_DOMAINS,
    DOMAIN_PROMPTS,
    DomainError,
    PromptEntry,
    PromptFile,
    check_domain_name,
    open_prompt_file,
    planned_domains,
    write_prompt_file,
)
from kd_core.errors import one_line
from kd_tui.data_preview import PREVIEW_FIELDS, cached_preview
from kd_tui.messages import StateChanged
from kd_tui.panes.data_domain import describe_data, list_label
from kd_tui.panes.paths import PathSuggester
from kd_tui.state import app_state

LABEL_WIDTH = 200  # a prompt's first line in the list is cut here (the editor shows it all)


@dataclass
class CustomDomain:
    name: str
    path: Path
    file: PromptFile | None = None
    error: str | None = None  # one line when its file cannot be read
    draft: list[PromptEntry] | None = None  # unsaved edits, kept while looking elsewhere

    @property
    def entries(self) -> list[PromptEntry]:
        if self.draft is not None:
            return self.draft
        return self.file.entries if self.file else []

    def edit(self) -> list[PromptEntry]:
        """The draft, started from the file's prompts on the first edit."""
        if self.draft is None:
            self.draft = [replace(e) for e in (self.file.entries if self.file else [])]
        return self.draft

    @property
    def dirty(self) -> bool:
        if self.draft is None:
            return False
        on_disk = self.file.entries if self.file else []
        order = [e.read_as for e in self.draft] != [e.read_as for e in on_disk]
        return order or any(e.changed for e in self.draft)


def load_custom(file: str) -> CustomDomain:
    p = Path(file).expanduser()
    try:
        name = check_domain_name(p.stem)
        return CustomDomain(name, p, open_prompt_file(p))
    except DomainError as e:
        return CustomDomain(p.stem, p, error=one_line(e))


def prompt_label(i: int, prompt: str, fields: dict[str, Any] | None = None) -> Text:
    """A prompt's row in the list: its number, its first line, how many more lines, and the
    names of its other JSON fields (they are kept when it is saved)."""
    lines = prompt.strip().splitlines() or [""]
    text = Text(f"{i:>3}  ", style="dim")
    first = lines[0][:LABEL_WIDTH]
    text.append(first if first.strip() else "(empty)", style="" if first.strip() else "italic")
    if len(lines) > 1:
        text.append(f"  ⏎ +{len(lines) - 1} lines", style="dim")
    extra = [k for k in (fields or {}) if k != "prompt"]
    if extra:
        text.append("  · " + ", ".join(extra), style="dim")
    return text


class PromptList(OptionList):
    """A domain's prompts, one row each; the pane's editor shows the highlighted one."""

    BINDINGS = [
        Binding("n", "new_prompt", "new prompt", show=False),
        Binding("insert", "new_prompt", "new prompt", show=False),
        Binding("delete", "delete_prompt", "delete prompt", show=False),
    ]

    def _pane(self) -> DomainsPane:
        return next(a for a in self.ancestors if isinstance(a, DomainsPane))

    def action_new_prompt(self) -> None:
        self._pane().new_prompt()

    def action_delete_prompt(self) -> None:
        self._pane().delete_prompt()


class DomainsPane(Container):
    DEFAULT_CSS = """
    DomainsPane { layout: horizontal; }
    DomainsPane #dom-left { width: 40; }
    DomainsPane #dom-list { height: 1fr; border: round $primary-darken-2; }
    DomainsPane #dom-list:focus { border: round $accent; }
    DomainsPane #dom-error { height: auto; color: $error; display: none; }
    DomainsPane #dom-error.-shown { display: block; }
    DomainsPane #dom-note { height: auto; color: $text-muted; padding: 0 1; }
    DomainsPane #dom-right { width: 1fr; padding: 0 1; }
    DomainsPane #dom-desc { height: auto; margin-bottom: 1; }
    DomainsPane .dom-label { color: $text-muted; }
    DomainsPane #dom-prompts { height: 2fr; max-height: 100%; }
    DomainsPane #dom-prompt { height: 8; }
    DomainsPane #dom-heldout { height: 1fr; }
    DomainsPane #dom-keys { height: 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "save prompts"),
        Binding("delete", "remove", "drop custom domain", show=False),
        Binding("escape", "leave", "back to the list", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.custom: dict[str, CustomDomain] = {}
        self.current: str | None = None
        self.clash: str | None = None  # two domain files with the same name (one line)
        self._syncing = False
        self._cursor: dict[str, int] = {}  # the highlighted prompt of each domain
        self._editing: tuple[str, int] | None = None  # whose prompt the editor holds
        # The data file (kd.toml's `data`) as kd_tui.data_preview read it, and for what.
        self.preview: dict[str, Any] | None = None
        self._preview_key: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dom-left"):
            yield SelectionList[str](id="dom-list")
            yield Input(
                placeholder="add a domain: prompts file path (enter)",
                id="dom-add",
                suggester=PathSuggester(),
            )
            yield Static("", id="dom-error")
            yield Static("", id="dom-note")
        with Vertical(id="dom-right"):
            yield Static("", id="dom-desc")
            yield Label("Training prompts", classes="dom-label", id="dom-train-label")
            yield PromptList(id="dom-prompts")
            yield Label("", classes="dom-label", id="dom-prompt-label")
            yield TextArea(id="dom-prompt", read_only=True, soft_wrap=True)
            yield Label(
                "Held-out prompts (never trained on; the Viewer offers them)", classes="dom-label"
            )
            yield TextArea(id="dom-heldout", read_only=True, soft_wrap=True)
            yield Static("", id="dom-keys")

    def on_mount(self) -> None:
        self.query_one("#dom-list").border_title = "Domains"
        self.reload()

    # ---- state <-> list ---------------------------------------------------------------------
    @property
    def spec(self) -> Any:
        return app_state(self).spec

    def reload(self) -> None:
        """Rebuild the list from the run spec (built-ins + its domain files + its data). A
        domain with unsaved edits keeps them (and the file they were made on)."""
        self._refresh_preview()
        previous, self.custom, self.clash = self.custom, {}, None
        for f in self.spec.domain_files:
            c = load_custom(f)
            known = self.custom.get(c.name)
            if known is not None:
                if known.path.resolve() != c.path.resolve() and self.clash is None:
                    self.clash = (
                        f"domain_files: {known.path} and {c.path} both make a domain named "
                        f"{c.name!r}; rename one of them (a run refuses them)"
                    )
                continue
            old = previous.get(c.name)
            self.custom[c.name] = old if old and old.draft is not None and old.path == c.path else c
        picked = set(self.effective_domains())
        lst = self.query_one("#dom-list", SelectionList)
        self._syncing = True
        try:
            lst.clear_options()
            for name in BUILTIN_DOMAINS:
                n = len(DOMAIN_PROMPTS[name]["examples"])
                lst.add_option(Selection(self._label(name, f"{n} prompts"), name, name in picked))
            for name, c in self.custom.items():
                extra = "⚠ unreadable" if c.error else f"custom · {len(c.entries)} prompts"
                lst.add_option(Selection(self._label(name, extra), name, name in picked))
            if self.data_name:
                label = self._label(self.data_name, list_label(self.preview))
                lst.add_option(Selection(label, self.data_name, True))
        finally:
            self._syncing = False
        self._update_note()
        if self.clash:
            self._error(self.clash)
        if self.current not in self.all_names():
            self.current = None
        self.show(self.current or BUILTIN_DOMAINS[0])

    @staticmethod
    def _label(name: str, extra: str) -> Text:
        text = Text(name)
        text.append(f"  {extra}", style="dim")
        return text

    @property
    def data_name(self) -> str | None:
        """The domain kd.toml's `data` makes (its folder's or file's name), if any."""
        return domain_name(self.spec.data) if self.spec.data else None

    def all_names(self) -> list[str]:
        return (
            list(BUILTIN_DOMAINS) + list(self.custom) + ([self.data_name] if self.data_name else [])
        )

    def effective_domains(self) -> list[str]:
        """What a run trains (kd_core.domains.planned_domains: the one rule)."""
        return planned_domains(self.spec.domains, self.spec.domain_files, self.spec.data)

    @on(SelectionList.SelectedChanged, "#dom-list")
    def _picked(self) -> None:
        if self._syncing:
            return
        selected = set(self.query_one("#dom-list", SelectionList).selected)
        if selected == set(self.effective_domains()):
            return  # a rebuild of the list (its events arrive later), not a user's change
        if self.data_name and self.data_name not in selected:
            self.spec.data = None  # unpicked: the data leaves the run (add it again by path)
        names = [n for n in self.all_names() if n in selected and n != self.data_name]
        self.spec.domains = names if names or not self.spec.data else []
        self._update_note()
        self.post_message(StateChanged("domains"))

    def _update_note(self) -> None:
        names = self.effective_domains()
        note = "A run trains: " + ", ".join(names)
        if not self.spec.domains:
            note += " (nothing picked: the default)"
        self.query_one("#dom-note", Static).update(note)

    def on_state_changed(self, message: StateChanged) -> None:
        # Our own message passes here on its way up (it bubbles); the app's copies do not.
        if not message.bubble and message.what in ("", "config", "domains"):
            self.reload()

    # ---- showing one domain -------------------------------------------------------------------
    @on(SelectionList.SelectionHighlighted, "#dom-list")
    def _highlighted(self, event: SelectionList.SelectionHighlighted) -> None:
        self.show(str(event.selection.value))

    def editable(self) -> CustomDomain | None:
        """The custom domain shown, when its prompts can be edited."""
        c = self.custom.get(self.current or "")
        return c if c is not None and c.error is None else None

    def show(self, name: str) -> None:
        self.current = name
        held = self.query_one("#dom-heldout", TextArea)
        if name == self.data_name:
            self._show_data(name)
            return
        if name in BUILTIN_DOMAINS:
            d = DOMAIN_PROMPTS[name]
            rows = [prompt_label(i, p) for i, p in enumerate(d["examples"], 1)]
            held.load_text("\n".join(d["heldout"]))
            keys = "space pick · built-in prompts are read-only · add your own from a file"
        else:
            c = self.custom[name]
            rows = [prompt_label(i, e.prompt, e.fields) for i, e in enumerate(c.entries, 1)]
            held.load_text("(a custom domain has no held-out prompts: all of them train)")
            keys = (
                "enter edit · esc back · n new · delete remove · ctrl+s save file · space pick"
                if not c.error
                else "delete (in the list) drops it from the run"
            )
        desc = self._describe(name)
        self.query_one("#dom-desc", Static).update(desc)
        self.query_one("#dom-keys", Static).update(keys)
        self.query_one("#dom-train-label", Label).update(
            "Training prompts" + (" (editable)" if self.editable() else "")
        )
        prompts = self.query_one("#dom-prompts", PromptList)
        prompts.set_options(rows)
        if rows:
            prompts.highlighted = min(self._cursor.get(name, 0), len(rows) - 1)
        self._show_prompt()

    def _show_data(self, name: str) -> None:
        """The data domain: what the preview read (and a new read when the file, the pair or
        the data settings changed)."""
        p = self.preview
        self.query_one("#dom-desc", Static).update(describe_data(name, self.spec.data or "", p))
        rows = [prompt_label(i, t) for i, t in enumerate((p or {}).get("prompts", []), 1)]
        self.query_one("#dom-prompts", PromptList).set_options(rows)
        held = "\n".join((p or {}).get("held_out_rows", []))
        self.query_one("#dom-heldout", TextArea).load_text(held)
        self.query_one("#dom-train-label", Label).update("Training rows (read-only)")
        self.query_one("#dom-keys", Static).update("delete (in the list) drops it from the run")
        self._show_prompt()

    def _refresh_preview(self) -> None:
        spec = self.spec
        if not spec.data:
            self.preview = self._preview_key = None
            return
        kwargs = {"teacher": spec.teacher_chat_template_kwargs}
        kwargs["student"] = spec.student_chat_template_kwargs
        args = (spec.data, spec.teacher or "demo-teacher", spec.student or "demo-student")
        cfg = {k: getattr(spec.config, k) for k in PREVIEW_FIELDS}  # what the preview reads
        key = repr((args, cfg, kwargs))
        if key != self._preview_key:
            self._preview_key, self.preview = key, None
            self._read_preview(key, *args, cfg, kwargs)

    @work(thread=True, exclusive=True, group="data-preview", exit_on_error=False)
    def _read_preview(self, key: str, data: str, t: str, s: str, cfg: Any, kw: Any) -> None:
        result = cached_preview(data, t, s, cfg, kw)
        self.app.call_from_thread(self._preview_read, key, result)

    def _preview_read(self, key: str, result: dict[str, Any]) -> None:
        if key == self._preview_key:
            self.preview = result
            self.reload()  # the list is rebuilt: keep the highlight where the user left it
            if self.current in (names := self.all_names()):
                self.query_one("#dom-list", SelectionList).highlighted = names.index(self.current)

    def _prompt_texts(self) -> list[str]:
        if self.current in BUILTIN_DOMAINS:
            return list(DOMAIN_PROMPTS[self.current]["examples"])
        c = self.custom.get(self.current or "")
        return [e.prompt for e in c.entries] if c else []

    def _show_prompt(self) -> None:
        """Put the highlighted prompt in the editor (and say which one it is)."""
        texts = self._prompt_texts()
        index = self.query_one("#dom-prompts", PromptList).highlighted
        editor = self.query_one("#dom-prompt", TextArea)
        label = self.query_one("#dom-prompt-label", Label)
        editor.read_only = self.editable() is None
        if index is None or not texts:
            self._editing = None
            editor.load_text("")
            label.update("")
            return
        index = min(index, len(texts) - 1)
        self._cursor[self.current or ""] = index
        self._editing = (self.current or "", index)
        if editor.text != texts[index]:
            editor.load_text(texts[index])
        how = "edit it here (esc: back to the list)" if not editor.read_only else "read-only"
        label.update(f"Prompt {index + 1} of {len(texts)} · {how}")

    @on(OptionList.OptionHighlighted, "#dom-prompts")
    def _prompt_highlighted(self) -> None:
        self._show_prompt()

    @on(OptionList.OptionSelected, "#dom-prompts")
    def _prompt_selected(self) -> None:
        if self.editable():
            self.query_one("#dom-prompt", TextArea).focus()

    @on(TextArea.Changed, "#dom-prompt")
    def _prompt_edited(self, event: TextArea.Changed) -> None:
        # The editor's text now belongs to the prompt it was loaded for (`_editing` is set as
        # it is loaded, so a late message from an earlier load changes nothing).
        c = self.editable()
        if c is None or self._editing is None or self._editing[0] != c.name:
            return
        index = self._editing[1]
        text = event.text_area.text
        if index >= len(c.entries) or c.entries[index].prompt == text:
            return
        was_dirty = c.dirty
        entry = c.edit()[index]
        entry.prompt = text
        self.query_one("#dom-prompts", PromptList).replace_option_prompt_at_index(
            index, prompt_label(index + 1, text, entry.fields)
        )
        if c.dirty != was_dirty:
            self._refresh_desc()

    def _describe(self, name: str) -> Text:
        """The domain's header: what it is, how many prompts, its file and format."""
        desc = Text(name, style="bold")
        if name in BUILTIN_DOMAINS:
            d = DOMAIN_PROMPTS[name]
            desc.append(
                f" · built in · {len(d['examples'])} training, {len(d['heldout'])} "
                f"held-out prompts\n{d['description']}"
            )
            return desc
        c = self.custom[name]
        if c.error:
            desc.append(f" · custom · {c.path}\n")
            desc.append(c.error, style="red")
            return desc
        kind = "JSON lines" if c.file and c.file.jsonl else "one prompt per line"
        desc.append(f" · custom · {len(c.entries)} prompts · {kind} · {c.path}")
        if c.dirty:
            desc.append("  (unsaved changes: ctrl+s saves)", style="yellow")
        return desc

    def _refresh_desc(self) -> None:
        if self.current is not None:
            self.query_one("#dom-desc", Static).update(self._describe(self.current))

    # ---- editing and adding -------------------------------------------------------------------
    def _error(self, message: str) -> None:
        err = self.query_one("#dom-error", Static)
        err.update(message)
        err.set_class(bool(message), "-shown")

    def new_prompt(self) -> None:
        c = self.editable()
        if c is None:
            self._error("built-in domains are read-only; add a custom domain from a file")
            return
        prompts = self.query_one("#dom-prompts", PromptList)
        at = 0 if prompts.highlighted is None else prompts.highlighted + 1
        c.edit().insert(at, PromptEntry(""))
        self._cursor[c.name] = at
        self.show(c.name)
        self.query_one("#dom-prompt", TextArea).focus()

    def delete_prompt(self) -> None:
        c = self.editable()
        if c is None:
            self._error("built-in domains are read-only; add a custom domain from a file")
            return
        index = self.query_one("#dom-prompts", PromptList).highlighted
        if index is None or index >= len(c.entries):
            return
        del c.edit()[index]
        self.show(c.name)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # ctrl+s saves a custom domain's prompts; anywhere else it falls through to the app's
        # ctrl+s (save kd.toml). delete drops a custom domain only from the domain list.
        if action == "save":
            return self.editable() is not None
        if action == "remove":
            return self.app.focused is self.query_one("#dom-list")
        return True

    def action_leave(self) -> None:
        """esc: out of a text box, so that keys are keys again (1-6 switch tabs)."""
        focused = self.app.focused
        if focused is self.query_one("#dom-prompt"):
            self.query_one("#dom-prompts").focus()
        elif focused is not None and focused.id in ("dom-add", "dom-heldout", "dom-prompts"):
            self.query_one("#dom-list").focus()

    def action_save(self) -> None:
        c = self.custom.get(self.current or "")
        if c is None:
            self._error("built-in domains are read-only; add a custom domain from a file")
            return
        if c.error or c.file is None:
            self._error(c.error or "")
            return
        if not c.entries:
            self._error(f"domain: {c.name!r} needs at least one prompt; nothing saved")
            return
        try:
            file = write_prompt_file(c.file, c.entries)
        except DomainError as e:
            self._error(one_line(e))
            return
        written = file is not c.file
        c.file, c.draft = file, None
        self._error(self.clash or "")
        self.reload()
        what = "saved" if written else "nothing changed in"
        self.notify(f"{what} {c.path}: {len(file.prompts)} prompts", timeout=3, markup=False)

    @on(Input.Submitted, "#dom-add")
    def _add(self, event: Input.Submitted) -> None:
        raw = event.value.strip()
        if not raw:
            return
        path = Path(raw).expanduser()
        if self._add_data(path):
            event.input.value = ""
            return
        try:
            name = check_domain_name(path.stem)
            prompts = open_prompt_file(path).prompts
        except DomainError as e:
            self._error(one_line(e))
            return
        if name in BUILTIN_DOMAINS:
            self._error(f"domain: {name!r} is a built-in domain; rename the file")
            return
        known = self.custom.get(name)
        if known and known.path.resolve() != path.resolve():
            self._error(
                f"domain_files: {known.path} and {path} both make a domain named {name!r}; "
                "rename one of them"
            )
            return
        self._error("")
        event.input.value = ""
        if known is None:
            self.spec.domain_files.append(str(path))
        base = self.effective_domains()
        if name not in base:
            # Adding a domain picks it, on top of what the run trained before.
            self.spec.domains = [n for n in base if n != name] + [name]
        self.current = name
        self.reload()
        # Back to the list, on the new domain: the box keeps no focus that would take the
        # number keys (1-6 switch tabs) as text.
        lst = self.query_one("#dom-list", SelectionList)
        lst.highlighted = self.all_names().index(name)
        lst.focus()
        self.post_message(StateChanged("domains"))
        self.notify(f"added domain {name!r}: {len(prompts)} prompts", timeout=3)

    def _add_data(self, path: Path) -> bool:
        """A folder, or a file whose rows carry answers (chat, completions, text), becomes the
        run's data (kd.toml's `data`); a prompts file stays a custom domain (False)."""
        try:
            if not path.is_dir():
                try:
                    if not read_data(path).train.has_answers:
                        return False
                except DataFileError:
                    return False  # the prompts file's reader says what is wrong, as before
            check_domain_name(domain_name(str(path)))
        except (DataFileError, DomainError) as e:
            self._error(one_line(e))
            return True
        self._error("")
        self.spec.data = str(path)
        self.current = domain_name(str(path))
        self.reload()
        lst = self.query_one("#dom-list", SelectionList)  # back to the list, on the data
        lst.highlighted = self.all_names().index(self.current)
        lst.focus()
        self.post_message(StateChanged("domains"))
        self.notify(f"added data {path}: it trains as domain {self.current!r}", timeout=3)
        return True

    def action_remove(self) -> None:
        lst = self.query_one("#dom-list", SelectionList)
        if lst.highlighted is None:
            return
        name = str(lst.get_option_at_index(lst.highlighted).value)
        if name == self.data_name:
            self.spec.data = None
            self.current = None
            self.reload()
            self.post_message(StateChanged("domains"))
            return
        c = self.custom.get(name)
        if c is None:
            self._error("built-in domains stay; space unpicks them")
            return
        self.spec.domain_files = [
            f for f in self.spec.domain_files if Path(f).expanduser() != c.path
        ]
        self.spec.domains = [n for n in self.spec.domains if n != name]
        self.current = None
        self.reload()
        self.post_message(StateChanged("domains"))
