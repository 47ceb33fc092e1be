"""kd_core.data_files reading: each format detected from its rows, key remapping, folders, and
every refusal one line naming the file, the line and what was expected; files read bounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kd_core.data_files import (
    ChatRow,
    CompletionRow,
    DataFileError,
    PromptRow,
    TextRow,
    read_data,
    read_data_file,
    row_dict,
)

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
    ],
    "tools": [{"type": "function", "function": {"name": "clock", "parameters": {}}}],
}


def write(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def refused(path: Path, **kw) -> str:
    with pytest.raises(DataFileError) as e:
        read_data_file(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_each_format_detected_with_typed_rows_and_line_numbers(tmp_path: Path) -> None:
    chat = read_data_file(write(tmp_path / "c.jsonl", CHAT, "", CHAT))
    assert chat.format == "chat" and [r.line for r in chat.rows] == [1, 3]
    row = chat.rows[0]
    assert isinstance(row, ChatRow) and row.assistant_turns == (2,)
    assert [m.role for m in row.messages] == ["system", "user", "assistant"]
    assert row.tools == tuple(CHAT["tools"]) and row_dict(row) == CHAT

    comp = read_data_file(write(tmp_path / "p.jsonl", {"prompt": "2+2?", "completion": " 4"}))
    assert comp.format == "completions"
    assert comp.rows == (CompletionRow(1, "2+2?", " 4"),)  # kept as written: no trimming
    text = read_data_file(write(tmp_path / "t.jsonl", {"text": "Once upon", "id": 7}))
    assert text.format == "text" and text.rows == (TextRow(1, "Once upon"),)
    # Today's prompt files: JSON lines with a prompt (other fields the user's), or plain text.
    prompts = read_data_file(write(tmp_path / "q.jsonl", {"prompt": " Why? ", "id": 1}))
    assert prompts.format == "prompts" and prompts.rows == (PromptRow(1, "Why?"),)
    plain = read_data_file(write(tmp_path / "q.txt", "What is KD?", "", '{"not": "json obj'))
    assert plain.format == "prompts"
    assert plain.rows == (PromptRow(1, "What is KD?"), PromptRow(3, '{"not": "json obj'))
    assert not plain.has_answers and chat.has_answers


def test_prompt_and_completion_keys_remap(tmp_path: Path) -> None:
    f = write(tmp_path / "qa.jsonl", {"question": "Capital of France?", "answer": "Paris"})
    got = read_data_file(f, prompt_key="question", completion_key="answer")
    assert got.format == "completions" and got.rows == (
        CompletionRow(1, "Capital of France?", "Paris"),
    )
    only_q = write(tmp_path / "q.jsonl", {"question": "Why?"})
    assert read_data_file(only_q, prompt_key="question").format == "prompts"
    # Without the remap the row names none of the formats' keys: the error says which it read.
    msg = refused(f)
    assert "line 1" in msg and "'question', 'answer'" in msg and '"messages" (chat)' in msg


def test_folder_with_splits_each_file_detected(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    write(d / "train.jsonl", CHAT, CHAT)
    write(d / "valid.jsonl", {"prompt": "a", "completion": "b"})
    src = read_data(d)
    assert src.train.format == "chat" and len(src.train.rows) == 2
    assert src.valid is not None and src.valid.format == "completions" and src.test is None
    write(d / "test.jsonl", {"text": "t"})
    assert read_data(d).test.format == "text"  # type: ignore[union-attr]
    one = read_data(d / "valid.jsonl")  # one file: the train set, nothing held out
    assert one.train.format == "completions" and one.valid is None


def test_folder_without_train_and_missing_path_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "valid.jsonl", CHAT)
    with pytest.raises(DataFileError, match="has no train.jsonl"):
        read_data(tmp_path / "d")
    with pytest.raises(DataFileError, match="does not exist"):
        read_data(tmp_path / "nowhere")


def _chat(*messages: dict, **extra: object) -> dict:
    return {"messages": list(messages), **extra}


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}

BAD_ROWS = [
    ('{"text": "a"', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('"just a string"', "expected a JSON object, got a string"),
    ({"text": 3}, '"text" should be a string, got a number'),
    ({"text": "   "}, '"text" is empty'),
    ({"prompt": "p", "completion": None}, '"completion" should be a string, got null'),
    ({"messages": "hi"}, '"messages" should be a non-empty array, got a string'),
    ({"messages": []}, '"messages" should be a non-empty array'),
    (_chat(U, "a"), '"messages"[1] should be an object'),
    (_chat(U, {"role": "bot", "content": "a"}), "has role 'bot'; expected one of assistant"),
    (_chat(U, {"role": "assistant", "content": ["a"]}), '"content" should be a string'),
    (_chat(U, {"role": "system", "content": "s"}), "no assistant turn"),
    (_chat(U, {"role": "assistant", "content": " "}), "no assistant turn"),
    (_chat(U, A, tools={"name": "f"}), '"tools" should be an array of objects'),
    ({"foo": 1}, 'expected a JSON object with "messages" (chat)'),
]


@pytest.mark.parametrize(("line", "expected"), BAD_ROWS)
def test_bad_row_is_one_line_naming_file_line_and_expectation(
    tmp_path: Path, line: object, expected: str
) -> None:
    # Two good rows and a blank line first: the number is the bad row's line in the file.
    f = write(tmp_path / "train.jsonl", _chat(U, A), _chat(U, A), "", line)
    msg = refused(f)
    assert f"{f} line 4:" in msg and expected in msg


def test_mixed_formats_refused_at_the_first_row_of_another_format(tmp_path: Path) -> None:
    f = write(tmp_path / "train.jsonl", CHAT, "", CHAT, {"prompt": "p", "completion": "c"})
    msg = refused(f)
    assert f"{f} line 4:" in msg and "a completions row in a chat file (line 1)" in msg
    # Prompts-only and completions are different formats too (some rows lack the answer).
    g = write(tmp_path / "g.jsonl", {"prompt": "p", "completion": "c"}, {"prompt": "p"})
    assert "line 2: a prompts row in a completions file" in refused(g)


def test_assistant_tool_call_without_content_is_kept_not_trained(tmp_path: Path) -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}
    tool = {"role": "tool", "content": "12:00", "tool_call_id": "1"}
    f = write(tmp_path / "c.jsonl", _chat(U, call, tool, A))
    row = read_data_file(f).rows[0]
    assert isinstance(row, ChatRow) and row.assistant_turns == (3,)
    assert row.messages[1].as_dict() == call and row.messages[2].as_dict() == tool


def test_empty_file_and_non_utf8_refused(tmp_path: Path) -> None:
    assert "holds no rows" in refused(write(tmp_path / "e.jsonl", "", ""))
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"text": "\xff"}\n')
    assert "not UTF-8" in refused(bad)


def test_dev_zero_fifo_and_huge_files_refused_with_the_bound(tmp_path: Path) -> None:
    if Path("/dev/zero").exists():
        assert "is a character device, not a regular file" in refused(Path("/dev/zero"))
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert "is a pipe, not a regular file" in refused(fifo)  # and does not wait for a writer
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:  # sparse: 2 GiB on paper, no disk used
        fh.truncate(2 << 30)
    assert "is 2 GiB, over the 1 GiB limit for a data file" in refused(big)
    small = write(tmp_path / "s.jsonl", {"text": "x" * 2000})
    assert "over the 1000 bytes limit" in refused(small, max_bytes=1000)
    assert "is a folder, not a regular file" in refused(tmp_path)
