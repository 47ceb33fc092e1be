"""Models pane: pick teacher and student (tiny local pair), see their facts and the tokenizer
verdict; a bad folder gives a one-line error and leaves the run's model unchanged."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, OptionList, Static
from tui_support import text, wait_until

from kd_tui.messages import StateChanged
from kd_tui.model_check import DEMO_PENDING, check_model, verdict_words
from kd_tui.panes.models import ModelsPane
from kd_tui.panes.paths import complete_path
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio


class _Host(App):
    def __init__(self) -> None:
        super().__init__()
        self.state = AppState()
        self.changes: list[str] = []

    def compose(self) -> ComposeResult:
        yield ModelsPane()

    def on_state_changed(self, message: StateChanged) -> None:
        self.changes.append(message.what)


wait_for = partial(wait_until, timeout=30.0)


async def type_and_enter(pilot, app: App, selector: str, value: str) -> None:
    box = app.query_one(selector, Input)
    box.focus()
    box.value = value
    await pilot.press("enter")


def test_check_model_never_builds_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_DEMO_DIR", str(tmp_path / "no-demo"))
    monkeypatch.setattr("kd_core.demo.shipped_pair", lambda recipe=None: None)  # not shipped
    c = check_model("demo-teacher", "teacher")
    assert c.ok and c.path is None and c.note == DEMO_PENDING
    assert not (tmp_path / "no-demo").exists()


def test_the_shipped_demo_pair_is_ready_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_DEMO_DIR", str(tmp_path / "demo"))
    c = check_model("demo-teacher", "teacher")
    assert c.ok and c.path is not None and (c.path / "config.json").is_file()


def test_path_completion(tmp_path: Path) -> None:
    (tmp_path / "models" / "teacher-7b").mkdir(parents=True)
    (tmp_path / "models" / "notes.txt").write_text("x")
    assert complete_path(f"{tmp_path}/mod") == f"{tmp_path}/models/"
    assert complete_path(f"{tmp_path}/models/te") == f"{tmp_path}/models/teacher-7b/"
    assert complete_path(f"{tmp_path}/models/no", dirs_only=True) is None
    assert complete_path(f"{tmp_path}/models/no") == f"{tmp_path}/models/notes.txt"


def test_verdict_words() -> None:
    assert "agree" in verdict_words({"strategy": "truncate", "identical": True})[0]
    assert "project" in verdict_words({"strategy": "project", "explanation": "x"})[0]
    assert "too little" in verdict_words({"strategy": "none"})[0]


async def test_models_pane_pick_pair(
    tiny_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_DEMO_DIR", str(tmp_path / "no-demo"))  # demo pair not built
    monkeypatch.setattr("kd_core.demo.shipped_pair", lambda recipe=None: None)  # nor shipped
    monkeypatch.setattr("kd_tui.panes.models.list_cached_models", lambda: ["acme/tiny-lm"])
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        # defaults: the demo pair, not built yet -> said plainly, nothing is built
        await wait_for(pilot, lambda: DEMO_PENDING in text(app, "#teacher-info"))
        await wait_for(pilot, lambda: "demo pair is built" in text(app, "#models-verdict"))
        options = app.query_one("#teacher-choices", OptionList)
        await wait_for(pilot, lambda: options.option_count == 3)
        assert [options.get_option_at_index(i).id for i in range(3)] == [
            "demo-teacher",
            "demo-student",
            "acme/tiny-lm",
        ]  # + the local HF cache

        await type_and_enter(pilot, app, "#teacher-input", str(tiny_pair.teacher))
        await wait_for(pilot, lambda: "llama" in text(app, "#teacher-info"))
        info = text(app, "#teacher-info")
        assert "parameters" in info and "vocabulary" in info and "384" in info
        assert "memory" in info and "quantization" in info
        assert app.state.spec.teacher == str(tiny_pair.teacher)

        await type_and_enter(pilot, app, "#student-input", str(tiny_pair.student))
        await wait_for(pilot, lambda: "llama" in text(app, "#student-info"))
        assert app.state.spec.student == str(tiny_pair.student)
        assert app.changes.count("models") == 2
        await wait_for(pilot, lambda: "agree" in text(app, "#models-verdict"))
        assert "identical vocabularies" in text(app, "#models-verdict")

        # a bad folder: one line beside the box, the run keeps the good student
        bad = tmp_path / "not-a-model"
        bad.mkdir()
        await type_and_enter(pilot, app, "#student-input", str(bad))
        err = app.query_one("#student-error", Static)
        await wait_for(pilot, lambda: "no config.json" in str(err.render()))
        assert "\n" not in str(err.render()) and err.has_class("-shown")
        assert app.state.spec.student == str(tiny_pair.student)
        assert "llama" in text(app, "#student-info")

        # picking from the list puts the name in the box and checks it
        choices = app.query_one("#student-choices", OptionList)
        choices.focus()
        choices.highlighted = 1  # demo-student (the second built-in entry)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.spec.student == "demo-student")
        assert app.query_one("#student-input", Input).value == "demo-student"
        assert not err.has_class("-shown")
