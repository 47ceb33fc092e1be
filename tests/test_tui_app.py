"""The app shell: tabs and keys, header, message re-broadcast, themes remembered, a bad
kd.toml, F1 help, the command palette's entries and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import TabbedContent, TabPane
from tui_support import run_script_to_end, scripted_app, scripted_run, wait_until

from kd_core.config import KDConfig, RunSpec
from kd_core.config_file import save_toml
from kd_tui.app import PANES, KDApp, main, short_name
from kd_tui.messages import RunCompleted, StateChanged
from kd_tui.panes.config import ConfigPane
from kd_tui.panes.train import TrainPane
from kd_tui.preferences import PREFS_FILE
from kd_tui.widgets.help_screen import HelpScreen
from kd_tui.widgets.loss_plot import LossPlot
from kd_tui.widgets.now_panel import NowPanel

pytestmark = pytest.mark.anyio
TAB_IDS = ["tab-models", "tab-domains", "tab-config", "tab-train", "tab-viewer", "tab-runs"]


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))
    return tmp_path / "kd-config"


async def test_tabs_in_order_and_number_keys(tmp_path: Path) -> None:
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        assert [p.id for p in app.query(TabPane)] == TAB_IDS
        assert [t for t, *_ in PANES] == TAB_IDS
        tabs = app.query_one(TabbedContent)
        assert tabs.active == "tab-models"
        for key, tab in zip("123456", TAB_IDS, strict=True):
            await pilot.press(key)
            assert tabs.active == tab
        assert len(app.panes()) == 6
        assert isinstance(app.query_one("#tab-config").children[0], ConfigPane)
        assert isinstance(app.query_one("#tab-train").children[0], TrainPane)


async def test_header_names_pair_and_follows_state(tmp_path: Path) -> None:
    save_toml(RunSpec(teacher="/models/big-teacher", student="small-student"), tmp_path / "kd.toml")
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.sub_title == "big-teacher → small-student · idle"
        app.state.spec.student = "other-student"
        app.query_one(ConfigPane).post_message(StateChanged("models"))
        await wait_until(pilot, lambda: "other-student" in app.sub_title)
    assert short_name("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"


async def test_state_changed_is_rebroadcast_once_without_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[str, str, bool]] = []

    def spy(self, message: StateChanged) -> None:
        received.append((type(self).__name__, message.what, message.bubble))

    monkeypatch.setattr(TrainPane, "on_state_changed", spy)
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(ConfigPane).post_message(StateChanged("config"))
        await wait_until(pilot, lambda: received)
        for _ in range(5):
            await pilot.pause()
        assert received == [("TrainPane", "config", False)]


async def test_run_completed_reaches_panes_and_sets_last_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs: list[Path] = []
    monkeypatch.setattr(
        ConfigPane, "on_run_completed", lambda self, m: outputs.append(m.output), raising=False
    )
    app = scripted_app(scripted_run(output=str(tmp_path / "out")), tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await run_script_to_end(pilot, app)
        await wait_until(pilot, lambda: outputs)
        assert outputs == [tmp_path / "out"]
        assert app.state.last_output == tmp_path / "out"
    assert RunCompleted(tmp_path).output == tmp_path


async def test_theme_choice_is_remembered(tmp_path: Path, _config_dir: Path) -> None:
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "kd-dark"
        assert not (_config_dir / PREFS_FILE).exists()  # starting is not choosing
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Theme: kd-light"].callback()
        await pilot.pause()
        assert app.theme == "kd-light"
        assert app.theme_variables["kd-series-kd"] == "#1F6FA8"  # plots follow the theme
        assert json.loads((_config_dir / PREFS_FILE).read_text()) == {"theme": "kd-light"}
        app.action_toggle_light_dark()
        await pilot.pause()
        assert json.loads((_config_dir / PREFS_FILE).read_text()) == {"theme": "kd-dark"}
        app.action_toggle_light_dark()
    # The next start opens in the remembered theme (chosen before the first frame).
    assert KDApp(config_path=tmp_path / "kd.toml").theme == "kd-light"


def test_unknown_or_broken_theme_file_falls_back(tmp_path: Path, _config_dir: Path) -> None:
    _config_dir.mkdir(parents=True)
    (_config_dir / PREFS_FILE).write_text("{not json")
    assert KDApp(config_path=tmp_path / "kd.toml").theme == "kd-dark"
    (_config_dir / PREFS_FILE).write_text('{"theme": "no-such-theme"}')
    assert KDApp(config_path=tmp_path / "kd.toml").theme == "kd-dark"


async def test_bad_config_opens_and_one_line_notice(tmp_path: Path) -> None:
    # A bad value no longer throws the whole file away (tests/test_user_files.py): the good
    # ones are read, the bad one is named in one line and waits in the Config form.
    bad = tmp_path / "kd.toml"
    bad.write_text("alpha = 7\nlora_rank = 8\n")
    app = KDApp(config_path=bad)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.state.spec.config == KDConfig(lora_rank=8)
        notes = [n.message for n in app._notifications]
        assert len(notes) == 1 and "\n" not in notes[0]
        assert "alpha" in notes[0] and "Config" in notes[0]
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("this is [not toml\n")
    app = KDApp(config_path=garbage)
    assert app.load_error is not None and "not valid TOML" in app.load_error
    assert app.state.spec == RunSpec()


async def test_f1_help_and_command_palette(tmp_path: Path) -> None:
    app = scripted_app(scripted_run(), tmp_path / "kd.toml")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-keys").render())
        for key in ("space", "ctrl+s", "ctrl+p", "1 … 6"):
            assert key in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        for title in (
            "Start training",
            "Pause / resume training",
            "Stop training",
            "Resume stopped run",
            "Save config",
            "Switch theme (light/dark)",
            "Theme: kd-dark",
            "Go to Models",
            "Go to Runs",
            "Help",
        ):
            assert title in commands
        commands["Go to Config"].callback()
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "tab-config"
        commands["Start training"].callback()
        await wait_until(pilot, lambda: app.engine is not None and app.engine.done)


async def test_small_terminal_layout(tmp_path: Path) -> None:
    app = scripted_app(scripted_run(), tmp_path / "kd.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await run_script_to_end(pilot, app)
        plot = app.query_one(LossPlot)
        assert plot.size.width >= 30 and plot.size.height >= 3
        assert app.query_one(NowPanel).size.width > 0
        assert app.query_one("#train-summary").region.bottom <= 24


def test_command_line_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "kd-tui" in out and "--config" in out


def test_trainer_command_for_a_multi_process_run(tmp_path):
    from kd_tui.detached import detached_command

    one = detached_command(tmp_path / "kd.toml")
    assert "--distributed" not in one and "--resume" not in one
    two = detached_command(tmp_path / "kd.toml", resume=True, processes=2)
    assert two[two.index("--distributed") + 1] == "2"
    assert "--resume" in two and two[two.index("--config") + 1] == str(tmp_path / "kd.toml")
