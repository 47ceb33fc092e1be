"""Domains pane: pick domains, read prompts, add a custom domain from a file (a bad file gives
a one-line error), edit its prompts (a list, and an editor for the highlighted prompt) and save
them back atomically. JSON lines, formats and the keyboard: tests/test_user_files.py."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, SelectionList, TextArea
from tui_support import text, wait_until

from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, read_prompts_file
from kd_tui.messages import StateChanged, broadcast_copy
from kd_tui.panes.domains import DomainsPane, PromptList
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio


class _Host(App):
    def __init__(self) -> None:
        super().__init__()
        self.state = AppState()
        self.changes: list[str] = []

    def compose(self) -> ComposeResult:
        yield DomainsPane()

    def on_state_changed(self, message: StateChanged) -> None:
        self.changes.append(message.what)


wait_for = partial(wait_until, timeout=10.0)


async def add_file(pilot, app: App, path: Path) -> None:
    box = app.query_one("#dom-add", Input)
    box.focus()
    box.value = str(path)
    await pilot.press("enter")
    await pilot.pause()


async def test_domains_pick_add_edit(tmp_path: Path) -> None:
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        lst = app.query_one("#dom-list", SelectionList)
        assert [lst.get_option_at_index(i).value for i in range(lst.option_count)] == list(
            BUILTIN_DOMAINS
        )
        assert set(lst.selected) == set(BUILTIN_DOMAINS)  # nothing named: all built-ins
        # the first domain is shown: description, training and held-out prompts
        assert DOMAIN_PROMPTS["thinking"]["description"][:30] in text(app, "#dom-desc")
        prompts = app.query_one("#dom-prompts", PromptList)
        assert prompts.option_count == len(DOMAIN_PROMPTS["thinking"]["examples"])
        editor = app.query_one("#dom-prompt", TextArea)
        assert editor.read_only and editor.text == DOMAIN_PROMPTS["thinking"]["examples"][0]
        held = app.query_one("#dom-heldout", TextArea)
        assert DOMAIN_PROMPTS["thinking"]["heldout"][0] in held.text

        # unpick "task" with the keyboard: the run's domains follow
        lst.focus()
        lst.highlighted = 1
        await pilot.press("space")
        await wait_for(
            pilot, lambda: "task" not in app.state.spec.domains and app.state.spec.domains != []
        )
        assert app.state.spec.domains == [d for d in BUILTIN_DOMAINS if d != "task"]
        assert "domains" in app.changes
        assert "task" in text(app, "#dom-desc")  # the highlighted domain is shown

        # a bad file: one line, nothing added
        await add_file(pilot, app, tmp_path / "missing.txt")
        err = text(app, "#dom-error")
        assert "does not exist" in err and "\n" not in err
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n")
        await add_file(pilot, app, empty)
        assert "holds no prompts" in text(app, "#dom-error")
        clash = tmp_path / "thinking.txt"
        clash.write_text("x\n")
        await add_file(pilot, app, clash)
        assert "built-in" in text(app, "#dom-error")
        assert app.state.spec.domain_files == []

        # a good file: added, picked, shown, editable
        mine = tmp_path / "support.txt"
        mine.write_text("How do I reset my password?\nWhere is my invoice?\n")
        await add_file(pilot, app, mine)
        assert app.state.spec.domain_files == [str(mine)]
        assert app.state.spec.domains[-1] == "support"
        assert "support" in lst.selected and lst.option_count == 7
        assert not app.query_one("#dom-error").has_class("-shown")
        await wait_for(pilot, lambda: prompts.option_count == 2)
        assert not editor.read_only and editor.text == "How do I reset my password?"

        # a new prompt after the last one (n), written in the editor, saved with ctrl+s: the
        # file is rewritten (one prompt per line)
        prompts.focus()
        prompts.highlighted = 1
        await pilot.press("n")
        await wait_for(pilot, lambda: app.focused is editor and prompts.option_count == 3)
        editor.insert("Can I change my plan?")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert read_prompts_file(mine) == [
            "How do I reset my password?",
            "Where is my invoice?",
            "Can I change my plan?",
        ]
        assert "3 prompts" in text(app, "#dom-desc")
        assert not list(tmp_path.glob(".support.txt.*"))  # no temp file left behind

        # an emptied prompt is refused, the file stays as it was
        editor.focus()
        editor.load_text("")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "support.txt: prompt 3 is empty" in text(app, "#dom-error")
        assert len(read_prompts_file(mine)) == 3

        # delete drops the custom domain from the run (its file stays)
        lst.focus()
        lst.highlighted = 6
        await pilot.press("delete")
        await pilot.pause()
        assert app.state.spec.domain_files == [] and "support" not in app.state.spec.domains
        assert mine.exists() and lst.option_count == 6


async def test_domains_follow_state_from_other_panes(tmp_path: Path) -> None:
    mine = tmp_path / "ops.jsonl"
    mine.write_text(json.dumps({"prompt": "Restart the service"}) + "\n")
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        # e.g. the Config pane loaded a kd.toml: the app re-broadcasts a non-bubbling copy
        app.state.spec.domain_files = [str(mine)]
        app.state.spec.domains = ["ops", "debug"]
        app.query_one(DomainsPane).post_message(broadcast_copy(StateChanged("config")))
        lst = app.query_one("#dom-list", SelectionList)
        await wait_for(pilot, lambda: lst.option_count == 7)
        assert set(lst.selected) == {"ops", "debug"}
        await pilot.pause()
        assert app.state.spec.domains == ["ops", "debug"]  # the rebuild did not rewrite it
