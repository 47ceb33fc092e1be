"""Models pane: pick teacher and student (tiny local pair), see their facts and the tokenizer
verdict; a bad folder gives a one-line error and leaves the run's model unchanged."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, OptionList, Static
from tui_support import text, wait_until

from kd_core.config import KDConfig, RunSpec
from kd_tui.messages import RunCompleted, StateChanged
from kd_tui.model_check import (
    DEMO_PENDING,
    check_model,
    coverage_words,
    measured_alignment,
    verdict_words,
)
from kd_tui.panes.models import ModelsPane
from kd_tui.panes.paths import complete_path
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio


class _Host(App):
    def __init__(self, state: AppState | None = None) -> None:
        super().__init__()
        self.state = state or AppState()
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
    assert "align" in verdict_words({"strategy": "align", "explanation": "x"})[0]
    assert "too little" in verdict_words({"strategy": "none"})[0]
    assert "'align' cannot" in verdict_words({"strategy": "refused", "asked": "align"})[0]
    assert "gold" in verdict_words({"strategy": "gold"})[0]  # a newer strategy: named


def _summary(out: Path, teacher: Path, student: Path, domains: dict) -> None:
    entries = {
        name: {"teacher": str(teacher), "student": str(student), **extra}
        for name, extra in domains.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_summary.json").write_text(json.dumps({"domains": entries}))


def test_measured_alignment_reads_the_summary(tmp_path: Path) -> None:
    t, s = tmp_path / "t", tmp_path / "s"
    assert measured_alignment(tmp_path / "none", t, s) == []  # no run yet
    (tmp_path / "kd_summary.json").write_text("{not json")
    assert measured_alignment(tmp_path, t, s) == []  # unreadable: nothing to say
    va = {"strategy": "align", "response_chars_covered": 0.94, "spans_one_to_one": 0.913}
    _summary(
        tmp_path,
        t,
        s,
        {"math": {"vocab_alignment": va}, "code": {}, "chat": {"vocab_alignment": "?"}},
    )
    (m,) = measured_alignment(tmp_path, t, s)
    assert m.domain == "math"
    assert coverage_words(m) == (
        "align · 94% of response characters covered · 91% spans one-to-one"
    )
    assert measured_alignment(tmp_path, t, tmp_path / "other") == []  # another pair's run
    _summary(tmp_path, t, s, {"math": {"vocab_alignment": {"strategy": "project"}}})
    assert coverage_words(measured_alignment(tmp_path, t, s)[0]) == "project"


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
        await wait_for(pilot, lambda: options.option_count == 4)
        assert [options.get_option_at_index(i).id for i in range(4)] == [
            "demo-teacher",
            "demo-student",
            "demo-student-sp",
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


async def test_models_pane_shows_the_sp_pairs_strategy_and_coverage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_lm.utils import load_tokenizer

    from kd_core.models.load import model_info, resolve_model
    from kd_core.vocab.plan import plan_vocab_alignment

    monkeypatch.setenv("KD_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr("kd_tui.panes.models.list_cached_models", lambda: [])
    t_path = resolve_model("demo-teacher", "teacher")  # the shipped pair and student, unpacked
    s_path = resolve_model("demo-student-sp", "student")
    expected = plan_vocab_alignment(
        load_tokenizer(t_path),
        load_tokenizer(s_path),
        model_info(t_path).vocab_size,
        model_info(s_path).vocab_size,
    )
    out = tmp_path / "out"
    spec = RunSpec("demo-teacher", "demo-student-sp", config=KDConfig(output=str(out)))
    app = _Host(AppState(spec=spec))
    async with app.run_test(size=(120, 40)) as pilot:
        want = f"vocabulary strategy: {expected.strategy}"
        await wait_for(pilot, lambda: want in text(app, "#models-verdict"))
        assert expected.explanation in text(app, "#models-verdict")
        coverage = app.query_one("#models-coverage", Static)
        assert not coverage.has_class("-shown")  # no run measured it yet

        # a run of this pair wrote its figures: shown once it completes
        va = {"strategy": "align", "response_chars_covered": 0.94, "spans_one_to_one": 0.91}
        _summary(out, t_path, s_path, {"thinking": {"vocab_alignment": va}})
        app.query_one(ModelsPane).post_message(RunCompleted(out))
        line = "thinking: align · 94% of response characters covered · 91% spans one-to-one"
        await wait_for(pilot, lambda: line in text(app, "#models-coverage"))
        assert coverage.has_class("-shown")
