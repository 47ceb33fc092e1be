"""Shared fixtures: a tiny teacher/student pair built locally (no hub, no download)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import kd_core  # noqa: F401  (fast BLAS before MLX)


@dataclass
class TinyPair:
    teacher: Path
    student: Path
    tokenizer: Path
    root: Path


def build_tiny_pair(root: Path, vocab: int = 384) -> TinyPair:
    from pydoc_data.topics import topics

    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_tokenizer

    tok = root / "tokenizer"
    train_tokenizer(list(topics.values())[:40], vocab, tok)
    eos = eos_id(tok)
    t_model, t_cfg = new_llama(LlamaSize(64, 2, 128, 4), vocab, seed=1)
    save_model(t_model, t_cfg, root / "teacher", tok, eos)
    s_model, s_cfg = new_llama(LlamaSize(32, 2, 64, 4), vocab, seed=2)
    save_model(s_model, s_cfg, root / "student", tok, eos)
    return TinyPair(root / "teacher", root / "student", tok, root)


def build_sp_student(root: Path, vocab: int = 420) -> Path:
    """A tiny student of the tiny pair's size with its own SentencePiece-style tokenizer."""
    from pydoc_data.topics import topics

    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_sp_tokenizer

    tok = root / "sp-tokenizer"
    train_sp_tokenizer(list(topics.values())[:40], vocab, tok)
    n = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    s_model, s_cfg = new_llama(LlamaSize(32, 2, 64, 4), n, seed=3)
    save_model(s_model, s_cfg, root / "student-sp", tok, eos_id(tok))
    return root / "student-sp"


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    return build_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session", autouse=True)
def _empty_working_folder(tmp_path_factory: pytest.TempPathFactory):
    """`kd` and `kd-tui` read ./kd.toml and the repository ships one for the demo pair: every
    test (and every module- or session-wide fixture) runs in an empty folder instead, so that
    neither it nor a user's kd.toml changes what a test tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own teacher cache and dashboard preferences; nothing touches the
    user's folders."""
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))
    # The dashboard remembers themes and recent output folders: never in the user's folder.
    monkeypatch.setenv("KD_CONFIG_DIR", str(tmp_path / "kd-config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A folder of the test's own (see _empty_working_folder).
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # not inside tmp_path: tests list it
