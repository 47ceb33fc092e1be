"""The dashboard on your own data (issue 25): the Config pane's `data` row is checked as you
type, and a run started from the dashboard trains the data file (the real detached trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input
from tui_support import open_config, wait_until

from kd_tui.app import KDApp
from kd_tui.panes.config import ConfigPane

pytestmark = pytest.mark.anyio
RUN_TIMEOUT = 90.0


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))


def _data(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Double {i}", "completion": f"It is {2 * i}."} for i in range(10)]
    path = tmp_path / "doubles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_data_row_checks_the_path_as_you_type(tmp_path: Path) -> None:
    app = KDApp(config_path=tmp_path / "kd.toml")
    data = _data(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        pane = app.query_one(ConfigPane)
        box = app.query_one("#cfg-data", Input)
        box.value = str(tmp_path / "missing.jsonl")
        await pilot.pause()
        assert "data" in pane.errors and "does not exist" in pane.errors["data"]
        assert app.state.spec.data is None
        box.value = str(data)
        await pilot.pause()
        assert "data" not in pane.errors and app.state.spec.data == str(data)
        assert pane.save()
        assert f'data = "{data}"' in (tmp_path / "kd.toml").read_text()


FORMAT_ROWS = {
    "chat": {
        "messages": [
            {"role": "user", "content": "Double 2"},
            {"role": "assistant", "content": "4."},
        ]
    },
    "completions": {"prompt": "Double 2", "completion": "It is 4."},
    "text": {"text": "Two doubled is four."},
    "prompts": {"prompt": "Double 2"},
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMAT_ROWS))
async def test_train_a_data_file_from_the_dashboard(tiny_pair, tmp_path: Path, fmt: str) -> None:
    data = tmp_path / "doubles.jsonl"
    data.write_text((json.dumps(FORMAT_ROWS[fmt]) + "\n") * 6)
    app = KDApp(config_path=tmp_path / "kd.toml")
    spec = app.state.spec
    spec.teacher, spec.student = str(tiny_pair.teacher), str(tiny_pair.student)
    spec.domains = []
    spec.config = spec.config.replace(
        output=str(tmp_path / "out"), num_iters=3, batch_size=2, steps_per_save=3
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        app.query_one("#cfg-data", Input).value = str(data)
        await pilot.pause()
        await pilot.press("t")
        await wait_until(pilot, lambda: not app.running, timeout=RUN_TIMEOUT)
        view = app.train_pane.view
        assert view.status == "finished", view.error
        summary = json.loads((tmp_path / "out" / "kd_summary.json").read_text())
        block = summary["domains"]["doubles"]["data"]
        answers = "generate" if fmt == "prompts" else "given"
        assert block["format"] == fmt and block["given_or_generated"] == answers
        assert (tmp_path / "out" / "doubles" / "adapters.safetensors").is_file()


async def test_domains_tab_adds_a_data_folder_and_shows_each_models_rendering(
    tmp_path: Path,
) -> None:
    """A folder typed in the Domains tab becomes the run's data; the pane shows its format,
    rows, split and the first row as each model's template writes it, answers highlighted."""
    from textual.widgets import Static

    from kd_tui.panes.domains import DomainsPane

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.jsonl").write_text(_data(tmp_path).read_text())
    (folder / "valid.jsonl").write_text('{"prompt": "Double 9", "completion": "It is 18."}\n')
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        pane = app.query_one(DomainsPane)
        box = app.query_one("#dom-add", Input)
        box.focus()
        box.value = str(folder)
        await pilot.press("enter")
        assert app.state.spec.data == str(folder)
        assert pane.effective_domains() == ["mine"]
        await wait_until(pilot, lambda: pane.preview is not None, timeout=60)
        assert "error" not in pane.preview, pane.preview
        assert pane.preview["format"] == "completions" and pane.preview["rows"] == 10
        teacher = pane.preview["examples"]["teacher"]
        ((start, end),) = teacher["trained"]
        assert teacher["text"][start:end].startswith("It is 0.")
        desc = str(app.query_one("#dom-desc", Static).render())
        assert "completions · 10 rows" in desc and "1 held out (valid.jsonl)" in desc
        assert "teacher reads" in desc and "student reads" in desc
        assert app.focused is app.query_one("#dom-list")
        await pilot.press("delete")
        assert app.state.spec.data is None


async def test_viewer_offers_the_datas_held_out_prompts(tmp_path: Path) -> None:
    from kd_tui.panes.viewer import ViewerPane

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.jsonl").write_text(_data(tmp_path).read_text())
    (folder / "valid.jsonl").write_text('{"prompt": "Double 9", "completion": "It is 18."}\n')
    app = KDApp(config_path=tmp_path / "kd.toml")
    app.state.spec.data, app.state.spec.domains = str(folder), []
    async with app.run_test(size=(120, 40)):
        assert app.query_one(ViewerPane)._heldout() == ["Double 9"]


async def test_models_tab_shows_the_data_as_each_model_renders_it(tmp_path: Path) -> None:
    from textual.widgets import Static

    data = _data(tmp_path)
    app = KDApp(config_path=tmp_path / "kd.toml")
    app.state.spec.data = str(data)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("1")
        box = app.query_one("#models-data", Static)
        await wait_until(pilot, lambda: "teacher reads" in str(box.render()), timeout=60)
        shown = str(box.render())
        assert "completions · 10 rows" in shown and "student reads" in shown
        assert "It is 0." in shown
