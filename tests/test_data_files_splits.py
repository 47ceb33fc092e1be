"""kd_core.data_files splits (valid.jsonl held out, else a seeded 5% drawn by row content) and
hf: datasets from the local cache (a stand-in `datasets` module: no download, no network)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest

from kd_core.data_files import (
    DataFileError,
    held_out_indices,
    read_data,
    read_hf_dataset,
    row_dict,
    split_rows,
)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(n)]


def held_contents(path: Path, seed: int) -> list[dict[str, Any]]:
    split = split_rows(read_data(path), seed)
    return sorted((row_dict(r) for r in split.held_out), key=json.dumps)


def test_valid_file_is_the_held_out_set(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", qa(10))
    write_rows(tmp_path / "valid.jsonl", qa(3))
    s = split_rows(read_data(tmp_path), seed=0)
    assert s.held_out_from == "valid" and s.held_out_path == tmp_path / "valid.jsonl"
    assert len(s.train) == 10 and s.held_out_lines == (1, 2, 3)


def test_seeded_split_is_five_percent_stable_and_seeded(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "a.jsonl", qa(100))
    s = split_rows(read_data(f), seed=3)
    assert s.held_out_from == "seeded" and s.held_out_path == f
    assert len(s.held_out) == 5 and len(s.train) == 95
    assert s.held_out_lines == tuple(r.line for r in s.held_out)
    assert not {r.line for r in s.train} & set(s.held_out_lines)
    assert split_rows(read_data(f), seed=3) == s  # the same on every run
    assert held_contents(f, 4) != held_contents(f, 3)  # the seed draws
    # Reordered rows: the same rows held out (their line numbers follow them).
    g = write_rows(tmp_path / "b.jsonl", qa(100)[::-1])
    assert held_contents(g, 3) == held_contents(f, 3)
    # One more row changes the draw only at the margin: the 5 held out are kept or one swaps.
    h = write_rows(tmp_path / "c.jsonl", qa(101))
    before = {json.dumps(r) for r in held_contents(f, 3)}
    assert len(before & {json.dumps(r) for r in held_contents(h, 3)}) >= 4


def test_small_and_degenerate_sets(tmp_path: Path) -> None:
    rows = read_data(write_rows(tmp_path / "two.jsonl", qa(2))).train.rows
    assert len(held_out_indices(rows, seed=0)) == 1  # at least one row from two
    one = read_data(write_rows(tmp_path / "one.jsonl", qa(1))).train.rows
    assert held_out_indices(one, seed=0) == ()  # a single row stays for training
    same = read_data(write_rows(tmp_path / "same.jsonl", qa(1) * 5)).train.rows
    assert held_out_indices(same, seed=0) == ()  # holding it out would hold out everything
    with pytest.raises(ValueError, match="fraction"):
        held_out_indices(rows, seed=0, fraction=1.0)


def test_duplicate_rows_never_straddle_the_split(tmp_path: Path) -> None:
    rows = qa(40) * 2  # every row twice
    split = split_rows(read_data(write_rows(tmp_path / "d.jsonl", rows)), seed=1)
    held = {json.dumps(row_dict(r)) for r in split.held_out}
    trained = {json.dumps(row_dict(r)) for r in split.train}
    assert held and not held & trained and len(split.held_out) == 2 * len(held)


# --- hf:NAME[:split] -------------------------------------------------------------------------


class FakeDatasets(types.ModuleType):
    """`datasets` as far as read_hf_dataset uses it: config flags and load_dataset."""

    def __init__(self, splits: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        super().__init__("datasets")
        self.config = types.SimpleNamespace(HF_HUB_OFFLINE=False, HF_DATASETS_OFFLINE=False)
        self.splits = splits
        self.calls: list[tuple[str, str, bool]] = []

    def load_dataset(self, name: str, split: str) -> list[dict[str, Any]]:
        hub = huggingface_hub.constants.HF_HUB_OFFLINE
        self.calls.append((name, split, self.config.HF_HUB_OFFLINE and hub))
        if (name, split) not in self.splits:
            raise FileNotFoundError(f"Couldn't find '{name}' on the Hugging Face Hub either\n")
        return self.splits[(name, split)]


def test_hf_dataset_read_offline_with_the_same_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    fake = FakeDatasets({("org/set", "train"): [chat, chat], ("org/set", "test"): qa(1)})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    src = read_hf_dataset("hf:org/set")
    assert src.train.format == "chat" and [r.line for r in src.train.rows] == [1, 2]
    assert src.path == "hf:org/set:train"
    assert read_hf_dataset("hf:org/set:test").train.format == "completions"
    # Offline during the call (datasets' and huggingface_hub's switches) unless downloads are
    # allowed; the switches put back after it.
    read_hf_dataset("hf:org/set", allow_download=True)
    assert [c[2] for c in fake.calls] == [True, True, False]
    assert fake.config.HF_HUB_OFFLINE is False
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_hf_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDatasets({("org/set", "train"): [qa(1)[0], {"text": "t"}]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cases = {
        "hf:org/set": "hf:org/set:train row 2: a text row in a completions file (row 1)",
        "hf:org/other": "cannot load org/other split 'train' from the local Hugging Face cache",
        "hf:": "is not hf:NAME or hf:NAME:SPLIT",
        "hf:a:b:c": "is not hf:NAME or hf:NAME:SPLIT",
    }
    for spec, expected in cases.items():
        with pytest.raises(DataFileError) as e:
            read_hf_dataset(spec)
        assert "\n" not in str(e.value) and expected in str(e.value)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: import fails
    with pytest.raises(DataFileError, match=r"needs the Hugging Face `datasets` library"):
        read_hf_dataset("hf:org/set")
