"""The user's files: nothing lost, nothing silently wrong (issue 16).

kd.toml: a bad value keeps the rest of the file and shows in the Config form; a save edits the
file in place (comments, order, unknown keys kept) and keeps the previous version as .bak; a
file that is not TOML is never saved over; a UTF-8 BOM is accepted. Prompts files: JSON lines
keep every field and their embedded line breaks, a save with no edit leaves the file
byte-identical; a file is JSON lines only when it is JSON lines; two files with one name are
an error naming both. Keys: 1-6 and the palette leave the Domains tab after a domain is added.
Errors of a bad save path name the user's path, not a hidden temporary file. kd.toml and
prompt files are read with a bound: a device, a pipe, a folder or a file past the bound is
one line naming the file (and the bound), never an endless read (issue 27).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.command import CommandList
from textual.widgets import Input, Select, Static, TabbedContent, TextArea
from tui_support import open_config, wait_until

from kd_core.config import ConfigError, RunSpec
from kd_core.config_file import load_toml, load_toml_partial, save_toml
from kd_core.domains import (
    DomainError,
    open_prompt_file,
    read_prompts_file,
    resolve_domains,
    write_prompt_file,
)
from kd_core.files.atomic import atomic_write_text
from kd_core.files.bounded_read import CONFIG_MAX_BYTES
from kd_tui.app import KDApp
from kd_tui.messages import StateChanged, broadcast_copy
from kd_tui.panes.config import ConfigPane
from kd_tui.panes.domains import DomainsPane, PromptList
from kd_tui.state import AppState

pytestmark = pytest.mark.anyio

wait_for = partial(wait_until, timeout=10.0)

USER_TOML = """\
# Distil Qwen 7B into 3B for the support bot.
teacher = "mlx-community/Qwen2.5-7B-Instruct-4bit"  # the big one
student = "mlx-community/Qwen2.5-3B-Instruct-4bit"
domains = ["thinking", "task"]

# loss
temperature = "3"   # soft targets
alpha = 0.5
lora_rank = 8
num_iters = 300
"""

EMAIL = {
    "prompt": "Summarise this email:\nHi Bob,\nThe meeting moved to 3pm.",
    "id": 1,
    "gold": "Meeting at 3pm",
}
REPLY = {"id": 2, "prompt": "Reply to Ann: Friday works.", "gold": "Yes, Friday."}


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))  # the theme file


def notes(app: App) -> list[str]:
    return [n.message for n in app._notifications]


def rendered(app: App, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def type_into(pilot, app: App, selector: str, text: str) -> None:
    box = app.query_one(selector, Input)
    box.focus()
    box.value = ""
    await pilot.pause()
    await pilot.press(*list(text))
    await pilot.pause()


# ---- kd.toml ------------------------------------------------------------------------------
async def test_bad_value_keeps_the_rest_and_shows_in_config(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    path.write_text(USER_TOML)
    app = KDApp(config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        spec = app.state.spec
        assert spec.teacher == "mlx-community/Qwen2.5-7B-Instruct-4bit"
        assert spec.domains == ["thinking", "task"]
        assert (spec.config.alpha, spec.config.lora_rank, spec.config.num_iters) == (0.5, 8, 300)
        (note,) = notes(app)
        assert "\n" not in note and "temperature" in note and "defaults" not in note

        # the bad value is in its field as the file writes it, its error beside it
        await open_config(pilot, app)
        pane = app.query_one(ConfigPane)
        assert app.query_one("#cfg-temperature", Input).value == '"3"'
        assert "temperature: expected a number" in rendered(app, "#err-temperature")
        assert app.query_one("#row-temperature").has_class("-invalid")
        # another pane's change does not replace it with a value the user never chose
        app.query_one(DomainsPane).post_message(StateChanged("domains"))
        for _ in range(3):
            await pilot.pause()
        assert app.query_one("#cfg-temperature", Input).value == '"3"'

        # saving is refused until it is fixed: the file is untouched
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert path.read_text() == USER_TOML and not (tmp_path / "kd.toml.bak").exists()
        assert any("not saved: temperature" in n for n in notes(app))

        # fixed and saved: only that value changed, comments and all kept; the old file is .bak
        # (2 is the default, the value the state held all along: the file still has to change)
        await type_into(pilot, app, "#cfg-temperature", "2")
        assert not pane.errors and pane.dirty
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: (tmp_path / "kd.toml.bak").exists())
        assert path.read_text() == USER_TOML.replace('temperature = "3"', "temperature = 2.0")
        assert (tmp_path / "kd.toml.bak").read_text() == USER_TOML
        assert load_toml(path).config.temperature == 2.0


async def test_bad_choice_shows_blank_until_picked(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    path.write_text('teacher_mode = "live"\nalpha = 0.3\n')
    app = KDApp(config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.state.spec.config.alpha == 0.3
        await open_config(pilot, app)
        select = app.query_one("#cfg-teacher_mode", Select)
        assert select.is_blank()
        assert "'live' is not allowed" in rendered(app, "#err-teacher_mode")
        select.value = "online"
        await wait_for(pilot, lambda: not app.query_one(ConfigPane).errors)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "online" in path.read_text())
        assert path.read_text() == 'teacher_mode = "online"\nalpha = 0.3\n'


async def test_file_that_is_not_toml_is_never_saved_over(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    garbage = "teacher = 'x'\nthis is [not toml\n"
    path.write_text(garbage)
    app = KDApp(config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_config(pilot, app)
        await type_into(pilot, app, "#cfg-alpha", "0.3")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert path.read_text() == garbage and not (tmp_path / "kd.toml.bak").exists()
        assert "not valid TOML" in notes(app)[0] and "not be saved over" in notes(app)[0]
        refused = [n for n in notes(app) if n.startswith("not saved")]
        assert refused and "not valid TOML" in refused[0] and "\n" not in refused[0]
    # the same rule headless (kd distill --save-config onto such a file)
    with pytest.raises(ConfigError, match="not valid TOML.*not saved over it"):
        save_toml(RunSpec(), path)
    assert path.read_text() == garbage


def test_save_edits_in_place(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    original = (
        "# mine\n"
        'teacher = "t"  # keep this comment\n'
        "alpha = 0.5\n"
        "unknown_key = 1\n"
        "\n"
        "[notes]\n"
        'why = "a table of my own"\n'
    )
    path.write_text(original)
    spec, bad = load_toml_partial(path)
    assert [b.key for b in bad] == ["unknown_key", "notes"]
    # nothing changed: nothing written, no backup
    save_toml(spec, path, backup=True)
    assert path.read_text() == original and not (tmp_path / "kd.toml.bak").exists()
    # a value changed, one added (not at its default), the teacher dropped (the demo pair);
    # a default the file does not name is not added
    spec.teacher = None
    spec.config = spec.config.replace(alpha=0.25, lora_rank=32)
    save_toml(spec, path, backup=True)
    assert path.read_text() == (
        "# mine\n"
        "alpha = 0.25\n"
        "unknown_key = 1\n"
        "lora_rank = 32\n"
        "\n"
        "[notes]\n"
        'why = "a table of my own"\n'
    )
    assert (tmp_path / "kd.toml.bak").read_text() == original
    # a run key the caller could not read is kept, not deleted
    path.write_text("teacher = 5\n")
    save_toml(RunSpec(), path, keep={"teacher"})
    assert path.read_text() == "teacher = 5\n"
    # CRLF stays CRLF
    path.write_bytes(b"alpha = 0.5\r\n")
    save_toml(RunSpec(config=spec.config.replace(alpha=0.5, lora_rank=8)), path)
    assert path.read_bytes() == b"alpha = 0.5\r\nlora_rank = 8\r\n"


async def test_kd_toml_with_a_bom_is_read_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "kd.toml"
    path.write_bytes("\ufeff# from Notepad\nalpha = 0.4\n".encode())
    assert load_toml(path).config.alpha == 0.4
    app = KDApp(config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.state.spec.config.alpha == 0.4 and not notes(app)
        await open_config(pilot, app)
        await type_into(pilot, app, "#cfg-alpha", "0.6")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: b"0.6" in path.read_bytes())
    assert path.read_bytes() == "\ufeff# from Notepad\nalpha = 0.6\n".encode()


def test_save_errors_name_the_users_path(tmp_path: Path) -> None:
    target = tmp_path / "kd.toml"
    (target / "inside").mkdir(parents=True)  # a folder where the file should go
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "x")
    assert str(target) in str(e.value) and ".kd.toml." not in str(e.value)
    with pytest.raises(ConfigError, match="is a folder") as ce:
        AppState(config_path=target).save()
    assert str(target) in str(ce.value)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="cannot write") as ce:
        save_toml(RunSpec(), blocked / "kd.toml")
    assert str(blocked / "kd.toml") in str(ce.value) and ".kd.toml." not in str(ce.value)


# ---- prompts files ------------------------------------------------------------------------
class _Host(App):
    def __init__(self) -> None:
        super().__init__()
        self.state = AppState()

    def compose(self) -> ComposeResult:
        yield DomainsPane()


async def add_file(pilot, app: App, path: Path) -> None:
    box = app.query_one("#dom-add", Input)
    box.focus()
    box.value = str(path)
    await pilot.press("enter")
    await pilot.pause()


async def test_jsonl_prompts_keep_fields_and_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "support.jsonl"
    reply_line = json.dumps(REPLY)
    original = json.dumps(EMAIL) + "\n\n" + reply_line + "\n"
    path.write_text(original)
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        await add_file(pilot, app, path)
        # ctrl+s with no edit: the file is byte-identical
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert path.read_text() == original
        assert any("nothing changed" in n and "2 prompts" in n for n in notes(app))

        prompts = app.query_one("#dom-prompts", PromptList)
        editor = app.query_one("#dom-prompt", TextArea)
        await wait_for(pilot, lambda: prompts.option_count == 2)
        assert editor.text == EMAIL["prompt"] and not editor.read_only  # one prompt, whole

        # an edit of the prompt (over several lines) keeps its other fields, in their order;
        # the other line stays as it was
        editor.focus()
        editor.move_cursor(editor.document.end)
        editor.insert("\nThanks, Ann")
        await pilot.pause()
        assert "unsaved" in rendered(app, "#dom-desc")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: path.read_text() != original)
        first, blank, second = path.read_text().splitlines()
        obj = json.loads(first)
        assert list(obj) == ["prompt", "id", "gold"]
        assert obj == dict(EMAIL, prompt=EMAIL["prompt"] + "\nThanks, Ann")
        assert blank == "" and second == reply_line
        assert read_prompts_file(path) == [obj["prompt"], REPLY["prompt"]]


async def test_plain_prompt_cannot_take_a_line_break(tmp_path: Path) -> None:
    path = tmp_path / "legal.txt"
    path.write_text("What is a contract?\r\nExplain liability.")  # CRLF, no final line end
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        await add_file(pilot, app, path)
        editor = app.query_one("#dom-prompt", TextArea)
        await wait_for(pilot, lambda: editor.text == "What is a contract?")
        editor.focus()
        editor.insert("Two\nlines: ")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        err = rendered(app, "#dom-error")
        assert "legal.txt: prompt 1 has a line break" in err and ".jsonl" in err
        assert path.read_bytes() == b"What is a contract?\r\nExplain liability."
        # a new last prompt: the old last line gets its line ending, in the file's style
        editor.load_text("What is a contract?")
        prompts = app.query_one("#dom-prompts", PromptList)
        prompts.focus()
        prompts.highlighted = 1
        await pilot.press("n")
        await wait_for(pilot, lambda: app.focused is editor)
        editor.insert("Define tort.")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: b"tort" in path.read_bytes())
    assert path.read_bytes() == b"What is a contract?\r\nExplain liability.\r\nDefine tort.\r\n"


def test_a_file_is_json_lines_only_when_it_is(tmp_path: Path) -> None:
    plain = tmp_path / "templates.txt"
    plain.write_text('{name} asked about billing.\nSay hello.\n{"prompt": "literal"}\n')
    assert read_prompts_file(plain) == [
        "{name} asked about billing.",
        "Say hello.",
        '{"prompt": "literal"}',
    ]
    every_line_json = tmp_path / "ops.txt"  # no .jsonl, but every line is a JSON object
    every_line_json.write_text('{"prompt": "Restart the service."}\n\n{"prompt": "Rotate."}\n')
    assert read_prompts_file(every_line_json) == ["Restart the service.", "Rotate."]
    named = tmp_path / "named.jsonl"  # named .jsonl: every line must be JSON
    named.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(DomainError, match="named.jsonl line 2 is not valid JSON"):
        read_prompts_file(named)


def test_prompt_file_written_in_its_own_format(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    original = "\ufeffFirst.\n\n  Second.  \nThird.\n\n"  # BOM, blank lines, padding
    path.write_text(original)
    pf = open_prompt_file(path)
    assert pf.prompts == ["First.", "Second.", "Third."] and not pf.jsonl
    assert write_prompt_file(pf, pf.entries) is pf and path.read_text() == original
    # drop the first, edit the last: the untouched line keeps its padding, the BOM stays
    kept, last = pf.entries[1], replace(pf.entries[2], prompt="Third, edited.")
    pf = write_prompt_file(pf, [kept, last])
    assert path.read_text() == "\ufeff\n  Second.  \nThird, edited.\n\n"
    assert pf.prompts == ["Second.", "Third, edited."]
    # changed on disk since it was read: not written over
    path.write_text("Someone else's edit.\n")
    with pytest.raises(DomainError, match="changed on disk"):
        write_prompt_file(pf, pf.entries)
    # a plain file whose every line would be a JSON object would read back as JSON lines
    pf = open_prompt_file(path)
    with pytest.raises(DomainError, match="read as JSON lines; not saved"):
        write_prompt_file(pf, [replace(pf.entries[0], prompt='{"prompt": "x"}')])
    assert path.read_text() == "Someone else's edit.\n"


def test_two_domain_files_with_one_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "legal.txt", tmp_path / "b" / "legal.txt"
    for p, text in ((a, "What is a contract?\n"), (b, "Explain liability.\n")):
        p.parent.mkdir()
        p.write_text(text)
    with pytest.raises(DomainError) as e:
        resolve_domains(["legal"], [str(a), str(b)])
    message = str(e.value)
    assert str(a) in message and str(b) in message and "\n" not in message
    assert resolve_domains(["legal"], [str(a), str(a)]) == {"legal": ["What is a contract?"]}


async def test_domains_pane_names_both_files_of_one_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "legal.txt", tmp_path / "b" / "legal.txt"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text("What is a contract?\n")
    app = _Host()
    async with app.run_test(size=(120, 40)) as pilot:
        await add_file(pilot, app, a)
        await add_file(pilot, app, b)
        err = rendered(app, "#dom-error")
        assert str(a) in err and str(b) in err
        assert app.state.spec.domain_files == [str(a)]
        # from a kd.toml that lists both: said, not silently dropped
        app.state.spec.domain_files = [str(a), str(b)]
        app.query_one(DomainsPane).post_message(broadcast_copy(StateChanged("config")))
        await wait_for(pilot, lambda: str(b) in rendered(app, "#dom-error"))


# ---- keys ---------------------------------------------------------------------------------
def first_command(app: App) -> str | None:
    """The title of the command palette's first hit (None while it has none)."""
    found = app.screen.query(CommandList)
    if not found or not found.first().option_count:
        return None
    prompt = found.first().get_option_at_index(0).prompt
    return getattr(prompt, "plain", str(prompt)).splitlines()[0].strip()


async def _app_with_added_domain(pilot, app: KDApp, path: Path) -> None:
    await pilot.press("2")
    await pilot.click("#dom-add")
    app.query_one("#dom-add", Input).value = str(path)  # (typed: the same, only slower)
    await pilot.press("enter")
    await wait_for(pilot, lambda: str(path) in app.state.spec.domain_files)
    await pilot.pause()


async def test_number_keys_leave_domains_after_adding_one(tmp_path: Path) -> None:
    path = tmp_path / "support.txt"
    path.write_text("How do I reset my password?\n")
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await _app_with_added_domain(pilot, app, path)
        tabs = app.query_one(TabbedContent)
        await pilot.press("3")
        await wait_for(pilot, lambda: tabs.active == "tab-config")
        await pilot.press("2")
        await wait_for(pilot, lambda: tabs.active == "tab-domains")
        # esc leaves a text box: the add box, or the prompt editor (to the prompt list)
        app.query_one("#dom-add", Input).focus()
        await pilot.pause()
        await pilot.press("escape", "1")
        await wait_for(pilot, lambda: tabs.active == "tab-models")
        await pilot.press("2")
        app.query_one("#dom-prompt", TextArea).focus()
        await pilot.pause()
        await pilot.press("escape", "escape", "4")
        await wait_for(pilot, lambda: tabs.active == "tab-train")


async def test_palette_go_to_leaves_domains_from_a_text_box(tmp_path: Path) -> None:
    path = tmp_path / "support.txt"
    path.write_text("How do I reset my password?\n")
    app = KDApp(config_path=tmp_path / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await _app_with_added_domain(pilot, app, path)
        tabs = app.query_one(TabbedContent)
        for box in ("#dom-add", "#dom-prompt"):  # focus in a text box of the Domains tab
            app.query_one(box).focus()
            await pilot.pause()
            await pilot.press("ctrl+p")
            await pilot.press(*"Go to Config")
            await wait_for(pilot, lambda: first_command(app) == "Go to Config")
            await pilot.press("down", "enter")
            await wait_for(pilot, lambda: tabs.active == "tab-config")
            for _ in range(3):
                await pilot.pause()
            assert tabs.active == "tab-config"
            await pilot.press("2")
            await wait_for(pilot, lambda: tabs.active == "tab-domains")


# ---- files read with a bound (issue 27) -------------------------------------------------------
def _kd_refuses(tmp_path: Path, *args: str) -> str:
    """`kd` refusing with one line and exit 2; a read that never ends fails the timeout."""
    cmd = [sys.executable, "-m", "kd_core", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_config_or_prompt_file_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    """`kd distill --config /dev/zero` used to read forever; a FIFO would wait for a writer."""
    err = _kd_refuses(tmp_path, "distill", "--config", "/dev/zero")
    assert err == "kd: error: config: /dev/zero is a character device, not a regular file"
    fifo = tmp_path / "kd.toml"
    os.mkfifo(fifo)
    err = _kd_refuses(tmp_path, "distill", "--config", str(fifo))
    assert err == f"kd: error: config: {fifo} is a pipe, not a regular file"
    fifo.unlink()
    err = _kd_refuses(tmp_path, "distill", "--domain-file", "/dev/zero")
    assert err == "kd: error: domain_files: /dev/zero is a character device, not a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing was written"
    folder = tmp_path / "prompts.txt"
    folder.mkdir()
    with pytest.raises(DomainError, match=r"prompts.txt is a folder, not a regular file"):
        read_prompts_file(folder)


def test_files_over_their_bound_are_refused_naming_it(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate(CONFIG_MAX_BYTES + 1)  # sparse: nothing is read to refuse it
    with pytest.raises(ConfigError) as e:
        load_toml(big)
    assert str(e.value) == (
        f"config: {big} is 1,048,577 bytes, over the 1 MiB limit for a config file"
    )
    # Smaller bounds, to write files past them: the prompt file, and a save over kd.toml.
    monkeypatch.setattr("kd_core.domains.prompt_file.PROMPT_FILE_MAX_BYTES", 100, raising=False)
    prompts = tmp_path / "many.txt"
    prompts.write_text("Say hello.\n" * 20)
    with pytest.raises(DomainError) as e:
        read_prompts_file(prompts)
    assert str(e.value) == (
        f"domain_files: {prompts} is 220 bytes, over the 100 bytes limit for a prompt file"
    )
    monkeypatch.setattr("kd_core.config_file.CONFIG_MAX_BYTES", 100, raising=False)
    config = tmp_path / "kd.toml"
    text = "# my settings\n" * 10 + 'teacher = "t"\n'
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"is 154 bytes, over the 100 bytes limit.*not saved"):
        save_toml(RunSpec(teacher="other"), config)
    assert config.read_text() == text, "nothing written is lost"
