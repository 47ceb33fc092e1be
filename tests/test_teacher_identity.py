"""A model is known by its bytes, not its folder: the teacher cache and --resume are keyed by
each model's weights and tokenizer fingerprints (kd_core/models/identity.py).

These failed before: a second teacher reused the first one's cached soft targets (the cache
key held an empty teacher fingerprint), and --resume accepted weights replaced in place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kd_core.cli import main
from kd_core.models.identity import IdentityError, ModelIdentity, identify_model
from kd_core.run.status import read_state, status_lines
from kd_core.teacher.cache import CACHE_FORMAT, sweep_stale_cache

pytestmark = pytest.mark.slow

FAST = ["--max-tokens", "10", "--batch-size", "2", "--max-seq-length", "64", "--domain", "task"]


@pytest.fixture(scope="module")
def other_teacher(tiny_pair, tmp_path_factory) -> Path:
    """A teacher of the tiny pair's shape and tokenizer, with other weights."""
    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model

    folder = tmp_path_factory.mktemp("teacher_b") / "teacher"
    model, cfg = new_llama(LlamaSize(64, 2, 128, 4), 384, seed=7)
    save_model(model, cfg, folder, tiny_pair.tokenizer, eos_id(tiny_pair.tokenizer))
    return folder


def _distill(teacher: Path, student: Path, out: Path, *extra: str) -> int:
    args = ["distill", "--teacher", str(teacher), "--student", str(student)]
    return main([*args, "--output", str(out), *FAST, *extra])


def _first_kd(out: Path) -> float:
    rows = (out / "task" / "metrics.jsonl").read_text().splitlines()
    return json.loads(rows[0])["kd"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the run record (written by every run, by design)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".kd-run" not in p.parts
    }


def test_a_second_teacher_regenerates_and_trains_as_with_an_empty_cache(
    tiny_pair, other_teacher, tmp_path, monkeypatch, capsys
):
    assert _distill(tiny_pair.teacher, tiny_pair.student, tmp_path / "a", "--iters", "2") == 0
    capsys.readouterr()
    assert _distill(other_teacher, tiny_pair.student, tmp_path / "b", "--iters", "2") == 0
    captured = capsys.readouterr()
    log = captured.err + captured.out
    # Teacher B's pass ran: nothing of teacher A's cache was reused.
    summary = json.loads((tmp_path / "b" / "kd_summary.json").read_text())
    assert "reused the cache" not in log and "task · cached" in log
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert _distill(other_teacher, tiny_pair.student, tmp_path / "c", "--iters", "2") == 0
    assert _first_kd(tmp_path / "b") == _first_kd(tmp_path / "c")
    assert _first_kd(tmp_path / "a") != _first_kd(tmp_path / "b")
    adapters = [(tmp_path / o / "task" / "adapters.safetensors").read_bytes() for o in "bc"]
    assert adapters[0] == adapters[1]
    # kd_summary.json keeps both fingerprints, per domain too.
    b_id = identify_model(other_teacher, "teacher")
    s_id = identify_model(tiny_pair.student, "student")
    entry = summary["domains"]["task"]
    assert summary["teacher_weights"] == entry["teacher_weights"] == b_id.weights
    assert summary["student_weights"] == entry["student_weights"] == s_id.weights
    assert entry["teacher_tokenizer"] == b_id.tokenizer


def _replace_in_place(folder: Path, donor: Path) -> None:
    """New bytes in the same file (a re-download or re-quantization into the same folder)."""
    target = folder / "model.safetensors"
    data = (donor / "model.safetensors").read_bytes()
    with open(target, "r+b") as fh:
        fh.truncate(0)
        fh.write(data)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_resume_refuses_a_model_replaced_in_place(tiny_pair, other_teacher, tmp_path, capsys, role):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_pair.teacher, teacher)
    shutil.copytree(tiny_pair.student, student)
    out = tmp_path / "out"
    assert _distill(teacher, student, out, "--iters", "2", "--steps-per-save", "1") == 0
    if role == "teacher":
        _replace_in_place(teacher, other_teacher)
    else:  # another student of the same shape
        from kd_core.demo.tiny import LlamaSize, new_llama, save_model

        model, cfg = new_llama(LlamaSize(32, 2, 64, 4), 384, seed=11)
        donor = tmp_path / "donor"
        save_model(model, cfg, donor, tiny_pair.tokenizer, 0)
        _replace_in_place(student, donor)
    cache = Path(os.environ["KD_CACHE_DIR"])
    before, cache_before = _files(out), _files(cache / "teacher")
    capsys.readouterr()
    rc = _distill(teacher, student, out, "--iters", "4", "--resume")
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and err.startswith("kd: error: resume:")
    path = teacher if role == "teacher" else student
    assert f"the {role}'s weights at {path} changed" in err
    assert "without --resume" in err
    assert _files(out) == before  # no checkpoint, adapter, metrics or summary touched
    assert _files(cache / "teacher") == cache_before  # no teacher pass ran


def test_kd_status_names_the_teacher_and_its_fingerprint(tiny_pair, tmp_path):
    out = tmp_path / "o"
    assert _distill(tiny_pair.teacher, tiny_pair.student, out, "--iters", "1") == 0
    state = read_state(out)
    assert state is not None and state.pair is not None
    t_id = identify_model(tiny_pair.teacher, "teacher")
    assert state.pair.teacher == str(tiny_pair.teacher)
    assert state.pair.teacher_weights == t_id.weights
    text = "\n".join(status_lines(state))
    assert f"teacher {tiny_pair.teacher} ({t_id.short})" in text


def test_caches_of_the_older_format_are_removed_and_said(tiny_pair, tmp_path, capsys):
    import mlx.core as mx

    cache = Path(os.environ["KD_CACHE_DIR"])
    (cache / "teacher").mkdir(parents=True)
    old = cache / "teacher" / "task-0123456789abcdef0123.safetensors"
    mx.save_safetensors(str(old), {"tokens": mx.zeros((3,))}, {"key": '"x"'})
    assert _distill(tiny_pair.teacher, tiny_pair.student, tmp_path / "o", "--iters", "1") == 0
    captured = capsys.readouterr()
    log = captured.err + captured.out
    assert not old.exists()
    assert log.count("teacher cache: removed 1 files") == 1 and str(cache / "teacher") in log
    # What this run wrote is of the current format and stays.
    assert sweep_stale_cache(cache) == (0, 0)
    assert any((cache / "teacher").glob("task-*.safetensors"))
    assert CACHE_FORMAT >= 3


def test_identity_changes_with_the_bytes_not_the_folder(tiny_pair, other_teacher, tmp_path):
    a = identify_model(tiny_pair.teacher, "teacher", tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_pair.teacher, moved)
    b = identify_model(moved, "teacher", tmp_path)
    assert (a.weights, a.tokenizer) == (b.weights, b.tokenizer)
    assert identify_model(other_teacher, "teacher", tmp_path).weights != a.weights
    # A chat template edited beside the same weights: another tokenizer identity.
    cfg = moved / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("assistant", "helper"))
    c = identify_model(moved, "teacher", tmp_path)
    assert c.weights == a.weights and c.tokenizer != a.tokenizer


def test_identity_refuses_blank_fields_and_unreadable_weights(tiny_pair, tmp_path):
    with pytest.raises(ValueError, match="ModelIdentity.weights"):
        ModelIdentity("t", "", "abc")
    folder = tmp_path / "t"
    shutil.copytree(tiny_pair.teacher, folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(IdentityError) as e:
        identify_model(folder, "teacher", tmp_path)
    assert str(e.value).startswith("teacher: cannot read") and "model.safetensors" in str(e.value)
    assert "\n" not in str(e.value)
