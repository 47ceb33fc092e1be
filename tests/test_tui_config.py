"""Config pane: every KDConfig field, validated as you type, presets, save to kd.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static
from tui_support import open_config, scripted_app, scripted_run, wait_until

from kd_core.config import CONFIG_FIELDS, KDConfig, RunSpec
from kd_core.config_file import load_toml, save_toml
from kd_tui.app import KDApp
from kd_tui.messages import StateChanged
from kd_tui.panes.config import (
    PRESETS,
    ConfigPane,
    FieldRow,
    all_groups,
    fields_of,
    text_of,
)
from kd_tui.panes.train import TrainPane

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


def note(app: KDApp, name: str) -> str:
    return str(app.query_one(f"#err-{name}", Static).render())


async def type_into(pilot, app: KDApp, name: str, text: str) -> None:
    box = app.query_one(f"#cfg-{name}", Input)
    box.focus()
    box.value = ""
    await pilot.pause()
    await pilot.press(*list(text))
    await pilot.pause()


def test_every_field_is_in_one_group() -> None:
    grouped = [name for group, _ in all_groups() for name in fields_of(group)]
    assert sorted(grouped) == sorted(CONFIG_FIELDS)
    assert "teacher" not in grouped and "student" not in grouped
    assert text_of(1e-4) == "0.0001" and text_of(2.0) == "2" and text_of(1e-5) == "1e-05"


async def test_fields_loaded_from_config_path(tmp_path: Path) -> None:
    save_toml(
        RunSpec(config=KDConfig(alpha=0.3, lora_rank=8, lr_schedule="cosine")), tmp_path / "kd.toml"
    )
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        assert len(app.query(FieldRow)) == len(CONFIG_FIELDS)
        assert app.query_one("#cfg-alpha", Input).value == "0.3"
        assert app.query_one("#cfg-lora_rank", Input).value == "8"
        assert app.query_one("#cfg-lr_schedule", Select).value == "cosine"
        assert "alpha" in str(
            app.query_one("#row-alpha .field-help", Static).render()
        ) or "KD term" in str(app.query_one("#row-alpha .field-help", Static).render())


async def test_validated_as_you_type_and_selects(tmp_path: Path) -> None:
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        pane = app.query_one(ConfigPane)
        await type_into(pilot, app, "temperature", "42")
        assert "temperature: 42.0 is out of range" in note(app, "temperature")
        assert app.query_one("#row-temperature").has_class("-invalid")
        assert app.state.spec.config.temperature == 4.0  # "4" was good: it stays
        assert "temperature" in pane.errors
        await pilot.press("backspace", "backspace", "5")
        await pilot.pause()
        assert app.state.spec.config.temperature == 5.0
        assert not app.query_one("#row-temperature").has_class("-invalid")
        assert note(app, "temperature") == "a number from 0.5 to 10"
        await type_into(pilot, app, "batch_size", "2.5")
        assert "batch_size: expected a whole number" in note(app, "batch_size")
        await type_into(pilot, app, "batch_size", "8")
        assert app.state.spec.config.batch_size == 8 and not pane.errors
        assert pane.dirty
        app.query_one("#cfg-teacher_mode", Select).value = "online"  # choices: a Select
        await wait_until(pilot, lambda: app.state.spec.config.teacher_mode == "online")


async def test_presets(tmp_path: Path) -> None:
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        await pilot.click("#preset-pure-kd")
        await wait_until(pilot, lambda: app.state.spec.config.alpha == 1.0)
        assert app.query_one("#cfg-alpha", Input).value == "1"
        await pilot.click("#preset-ce-only")
        await wait_until(pilot, lambda: app.state.spec.config.alpha == 0.0)
        await pilot.click("#preset-quick")
        await wait_until(pilot, lambda: app.state.spec.config.num_iters == 20)
        assert app.query_one("#cfg-num_iters", Input).value == "20"
        app.query_one(ConfigPane).apply_preset("recommended")
        cfg = app.state.spec.config
        assert (cfg.temperature, cfg.alpha, cfg.lora_rank) == (2.0, 0.7, 16)
        assert set(PRESETS) == {"quick", "recommended", "pure-kd", "ce-only"}


async def test_save_writes_kd_toml(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    app = KDApp(config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        await type_into(pilot, app, "lora_rank", "32")
        await pilot.press("ctrl+s")
        await wait_until(pilot, path.is_file)
        assert load_toml(path).config.lora_rank == 32
        assert not app.query_one(ConfigPane).dirty
        await pilot.click("#preset-pure-kd")
        await pilot.click("#config-save")
        await wait_until(pilot, lambda: load_toml(path).config.alpha == 1.0)


async def test_save_refused_with_errors_and_training_refused(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    app = scripted_app(scripted_run(), path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        await type_into(pilot, app, "alpha", "2")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not path.exists()
        assert any("not saved: alpha" in n.message for n in app._notifications)
        app.start_run()
        await pilot.pause()
        assert app.engine is None and not app.running
        assert any("fix the configuration" in n.message for n in app._notifications)


async def test_state_changes_between_panes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state follows every key; the other panes hear about it once typing pauses. And
    a change made elsewhere shows in the fields."""

    heard: list[str] = []
    monkeypatch.setattr(TrainPane, "on_state_changed", lambda self, m: heard.append(m.what))
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        box = app.query_one("#cfg-num_iters", Input)
        for text in ("1", "12", "123", "1234"):  # keystrokes, queued back to back
            box.value = text
        await wait_until(pilot, lambda: app.state.spec.config.num_iters == 1234)
        await wait_until(pilot, lambda: heard)
        for _ in range(3):
            await pilot.pause()
        assert heard == ["config"]
        # The other way: another pane changed the state; the fields follow.
        app.state.spec.config = app.state.spec.config.replace(alpha=0.25, teacher_mode="online")
        app.train_pane.post_message(StateChanged("runs"))
        await wait_until(pilot, lambda: app.query_one("#cfg-alpha", Input).value == "0.25")
        assert app.query_one("#cfg-teacher_mode", Select).value == "online"
        assert app.state.spec.config.alpha == 0.25
