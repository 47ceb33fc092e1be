"""Domains pane: pick the domains a run trains, read their prompts, edit and add custom ones.

Keys: ↑/↓ move in the list (the right side shows that domain) · space picks / unpicks ·
delete drops a custom domain from the run (its file stays) · type a prompts file path in
the box below the list + enter to add a domain (its name is the file's stem) · in a custom
domain's prompts, edit freely (one prompt per line) and ctrl+s saves back to its file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import Input, Label, SelectionList, Static, TextArea
from textual.widgets.selection_list import Selection

from kd_core.atomic_io import atomic_write_text
from kd_core.domains import (
    BUILTIN_DOMAINS,
    DOMAIN_PROMPTS,
    DomainError,
    check_domain_name,
    domain_from_file,
    read_prompts_file,
)
from kd_tui.messages import StateChanged
from kd_tui.panes.paths import PathSuggester


@dataclass
class CustomDomain:
    name: str
    path: Path
    prompts: list[str] = field(default_factory=list)
    error: str | None = None  # one line when its file cannot be read
    draft: str | None = None  # unsaved edits, kept while the user looks at other domains


def load_custom(file: str) -> CustomDomain:
    p = Path(file).expanduser()
    try:
        name, prompts = domain_from_file(p)
        return CustomDomain(name, p, prompts)
    except DomainError as e:
        return CustomDomain(p.stem, p, error=str(e).splitlines()[0])


def prompts_file_text(path: Path, prompts: list[str]) -> str:
    """The file's new text. A JSON-lines file stays JSON lines, keeping the other fields of
    prompts that did not change; a plain file stays one prompt per line (a prompt that
    starts with '{' forces JSON lines: it would be read back as JSON otherwise)."""
    originals: dict[str, dict[str, Any]] = {}
    jsonl = any(p.startswith("{") for p in prompts)
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("{"):
                jsonl = True
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                    originals.setdefault(obj["prompt"].strip(), obj)
    except OSError:
        pass
    if not jsonl:
        return "".join(p + "\n" for p in prompts)
    return "".join(
        json.dumps(originals.get(p, {"prompt": p}), ensure_ascii=False) + "\n" for p in prompts
    )


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
    DomainsPane #dom-train { height: 2fr; }
    DomainsPane #dom-heldout { height: 1fr; }
    DomainsPane #dom-keys { height: 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "save prompts"),
        Binding("delete", "remove", "drop custom domain", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.custom: dict[str, CustomDomain] = {}
        self.current: str | None = None
        self._syncing = False

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
            yield TextArea(id="dom-train", read_only=True, soft_wrap=True)
            yield Label(
                "Held-out prompts (never trained on; the Viewer offers them)", classes="dom-label"
            )
            yield TextArea(id="dom-heldout", read_only=True, soft_wrap=True)
            yield Static("space pick · delete drop custom · ctrl+s save prompts", id="dom-keys")

    def on_mount(self) -> None:
        self.query_one("#dom-list").border_title = "Domains"
        self.reload()

    # ---- state <-> list ---------------------------------------------------------------------
    @property
    def spec(self) -> Any:
        return self.app.state.spec  # type: ignore[attr-defined]

    def reload(self) -> None:
        """Rebuild the list from the run spec (built-ins + its domain files)."""
        self.custom = {}
        for f in self.spec.domain_files:
            c = load_custom(f)
            old = self.custom.get(c.name)
            self.custom[c.name] = old if old and old.draft else c
        picked = set(self.effective_domains())
        lst = self.query_one("#dom-list", SelectionList)
        self._syncing = True
        try:
            lst.clear_options()
            for name in BUILTIN_DOMAINS:
                n = len(DOMAIN_PROMPTS[name]["examples"])
                lst.add_option(Selection(self._label(name, f"{n} prompts"), name, name in picked))
            for name, c in self.custom.items():
                extra = "⚠ unreadable" if c.error else f"custom · {len(c.prompts)} prompts"
                lst.add_option(Selection(self._label(name, extra), name, name in picked))
        finally:
            self._syncing = False
        self._update_note()
        if self.current not in self.all_names():
            self.current = None
        self.show(self.current or BUILTIN_DOMAINS[0])

    @staticmethod
    def _label(name: str, extra: str) -> Text:
        text = Text(name)
        text.append(f"  {extra}", style="dim")
        return text

    def all_names(self) -> list[str]:
        return list(BUILTIN_DOMAINS) + list(self.custom)

    def effective_domains(self) -> list[str]:
        """What a run trains (kd_core.domains.resolve_domains' rule when none is named)."""
        if self.spec.domains:
            return list(self.spec.domains)
        return list(self.custom) if self.custom else list(BUILTIN_DOMAINS)

    @on(SelectionList.SelectedChanged, "#dom-list")
    def _picked(self) -> None:
        if self._syncing:
            return
        selected = set(self.query_one("#dom-list", SelectionList).selected)
        if selected == set(self.effective_domains()):
            return  # a rebuild of the list (its events arrive later), not a user's change
        self.spec.domains = [n for n in self.all_names() if n in selected]
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

    def show(self, name: str) -> None:
        if self.current in self.custom and self.current != name:
            self._keep_draft()
        self.current = name
        train = self.query_one("#dom-train", TextArea)
        held = self.query_one("#dom-heldout", TextArea)
        desc = Text(name, style="bold")
        if name in BUILTIN_DOMAINS:
            d = DOMAIN_PROMPTS[name]
            desc.append(
                f" · built in · {len(d['examples'])} training, {len(d['heldout'])} "
                f"held-out prompts\n{d['description']}"
            )
            train.read_only = True
            train.load_text("\n".join(d["examples"]))
            held.load_text("\n".join(d["heldout"]))
        else:
            c = self.custom[name]
            if c.error:
                desc.append(f" · custom · {c.path}\n")
                desc.append(c.error, style="red")
            else:
                desc.append(
                    f" · custom · {len(c.prompts)} prompts · {c.path}\n"
                    "Edit the prompts below (one per line); ctrl+s saves the file."
                )
            if c.draft is not None:
                desc.append("  (unsaved changes)", style="yellow")
            train.read_only = bool(c.error)
            train.load_text(c.draft if c.draft is not None else "\n".join(c.prompts))
            held.load_text("(a custom domain has no held-out prompts: all of them train)")
        self.query_one("#dom-desc", Static).update(desc)
        self.query_one("#dom-train-label", Label).update(
            "Training prompts" + ("" if train.read_only else " (editable)")
        )

    def _keep_draft(self) -> None:
        c = self.custom.get(self.current or "")
        if c is None or c.error:
            return
        text = self.query_one("#dom-train", TextArea).text
        c.draft = text if text != "\n".join(c.prompts) else None

    # ---- editing and adding -------------------------------------------------------------------
    def _error(self, message: str) -> None:
        err = self.query_one("#dom-error", Static)
        err.update(message)
        err.set_class(bool(message), "-shown")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # ctrl+s saves a custom domain's prompts; anywhere else it falls through to the app's
        # ctrl+s (save kd.toml).
        if action == "save":
            c = self.custom.get(self.current or "")
            return c is not None and c.error is None
        return True

    def action_save(self) -> None:
        c = self.custom.get(self.current or "")
        if c is None:
            self._error("built-in domains are read-only; add a custom domain from a file")
            return
        if c.error:
            self._error(c.error)
            return
        prompts = [
            ln.strip()
            for ln in self.query_one("#dom-train", TextArea).text.splitlines()
            if ln.strip()
        ]
        if not prompts:
            self._error(f"domain: {c.name!r} needs at least one prompt; nothing saved")
            return
        try:
            atomic_write_text(c.path, prompts_file_text(c.path, prompts))
            c.prompts = read_prompts_file(c.path)  # read back: what a run will see
        except (OSError, DomainError) as e:
            self._error(f"domain: cannot save {c.path}: {str(e).splitlines()[0]}")
            return
        c.draft = None
        self._error("")
        self.reload()
        self.notify(f"saved {len(c.prompts)} prompts to {c.path}", timeout=3)

    @on(Input.Submitted, "#dom-add")
    def _add(self, event: Input.Submitted) -> None:
        raw = event.value.strip()
        if not raw:
            return
        path = Path(raw).expanduser()
        try:
            name, prompts = domain_from_file(path)
            check_domain_name(name)
        except DomainError as e:
            self._error(str(e).splitlines()[0])
            return
        if name in BUILTIN_DOMAINS:
            self._error(f"domain: {name!r} is a built-in domain; rename the file")
            return
        known = self.custom.get(name)
        if known and known.path.resolve() != path.resolve():
            self._error(f"domain: a custom domain {name!r} already comes from {known.path}")
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
        self.post_message(StateChanged("domains"))
        self.notify(f"added domain {name!r}: {len(prompts)} prompts", timeout=3)

    def action_remove(self) -> None:
        lst = self.query_one("#dom-list", SelectionList)
        if lst.highlighted is None:
            return
        name = str(lst.get_option_at_index(lst.highlighted).value)
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
