"""A run owns its output folder (kd_core/run/record.py): lock, run.json, the event file, and
`kd status` reading them (kd_core/run/status.py). The unit tests write the files directly;
the slow ones run the real `kd distill` on the tiny pair in a child process."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_core.cli import main
from kd_core.events import Paused, RunFinished, Step, describe, event_from_json
from kd_core.run.record import (
    CONFIG_FILE,
    EVENTS_FILE,
    RECORD_FILE,
    DamagedRecordError,
    RunLockedError,
    RunWriter,
    acquire_lock,
    is_live,
    read_record,
    record_damage,
    run_dir,
)
from kd_core.run.status import find_states, read_state, status_lines

TIMEOUT = 90.0


def _step(i: int, total: int = 100) -> Step:
    return Step("d", i, total, 1.0, 2.0, 1.3, 1e-4, 64, 100.0, 0.5, 0.1 * i, 1.0)


def test_the_writer_owns_the_folder_until_it_closes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = RunWriter.open(out, ["kd", "distill"], resume=False, extra=[])
    assert is_live(out)
    with pytest.raises(RunLockedError) as e:
        acquire_lock(out, wait_s=0.1)
    assert "\n" not in str(e.value) and str(os.getpid()) in str(e.value)
    for i in range(1, 4):
        w(_step(i))
    state = read_state(out)
    assert state is not None and state.state == "running" and state.live
    assert state.last_step is not None and state.last_step["step"] == 3
    w(Paused(True, "d", 3))
    assert read_state(out).state == "paused"
    w(RunFinished(str(out / "kd_summary.json"), [], stopped=True))
    w.close(3)
    assert not is_live(out)
    state = read_state(out)
    assert state.state == "stopped" and state.record.exit_status == 3
    lines = (run_dir(out) / EVENTS_FILE).read_text().splitlines()
    assert [event_from_json(x).kind for x in lines] == ["step"] * 3 + ["paused", "run_finished"]
    acquire_lock(out, wait_s=0.1)  # free again (released by close)


def test_a_dead_process_without_a_final_event_is_crashed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = RunWriter.open(out, ["kd", "distill"], resume=False, extra=["--allow-download"])
    w(_step(1))
    os.close(w._fd)  # what the kernel does when the process dies: the lock goes
    state = read_state(out)
    assert state is not None and state.state == "crashed" and not state.live
    text = "\n".join(status_lines(state))
    assert "died without a final event" in text and "--resume" in text
    assert "--allow-download" in state.record.resume_command


def test_a_resume_appends_after_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = RunWriter.open(out, [], resume=False, extra=[])
    w(_step(1))
    w._events.write('{"kind":"step","dom')  # a crash in the middle of a line
    w._events.flush()
    os.close(w._fd)
    w2 = RunWriter.open(out, [], resume=True, extra=[])
    assert w2.record.events_offset > 0
    w2(_step(2))
    w2.close(0)
    lines = (run_dir(out) / EVENTS_FILE).read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 2 and json.loads(lines[0])["step"] == 1
    state = read_state(out)
    assert state.state == "finished" and state.last_step["step"] == 2
    assert [s.output for s in find_states(tmp_path)] == [out]


# ---- the real `kd distill` ------------------------------------------------------------------
def _kd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kd_core", *args]


def _distill(tiny_pair, tmp_path: Path, out: Path, iters: int, save: int) -> list[str]:
    prompts = tmp_path / "quick.txt"
    prompts.write_text("Name a colour.\nCount to three.\nSay hello.\nPick a number.\n")
    return _kd(
        "distill",
        "--teacher",
        str(tiny_pair.teacher),
        "--student",
        str(tiny_pair.student),
        "--domain-file",
        str(prompts),
        "--iters",
        str(iters),
        "--max-tokens",
        "8",
        "--batch-size",
        "1",
        "--steps-per-save",
        str(save),
        "--output",
        str(out),
        "--quiet",
    )


def _wait_for_step(out: Path, at_least: int = 1) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state = read_state(out)
        if state and state.last_step and state.last_step["step"] >= at_least:
            return state.last_step
        time.sleep(0.1)
    raise AssertionError(f"no step {at_least} in {out}")


@pytest.mark.slow
def test_a_second_run_on_the_folder_refuses_and_control_words_work(tiny_pair, tmp_path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(
        _distill(tiny_pair, tmp_path, out, 1_000_000, 1_000_000),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_step(out)
        second = subprocess.run(
            _distill(tiny_pair, tmp_path, out, 5, 5), capture_output=True, text=True, env=env
        )
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "in use by a live run" in err[0] and str(first.pid) in err[0]
        status = subprocess.run(_kd("status", str(out)), capture_output=True, text=True, env=env)
        assert status.returncode == 0 and ": running · pid" in status.stdout
        with open(run_dir(out) / "control", "a") as fh:
            fh.write("stop\n")
        assert first.wait(timeout=TIMEOUT) == 3
    finally:
        if first.poll() is None:
            first.kill()
    state = read_state(out)
    assert state.state == "stopped" and state.record.exit_status == 3
    assert state.record.pid == first.pid


@pytest.mark.slow
def test_a_killed_run_is_crashed_and_its_resume_command_continues(tiny_pair, tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _distill(tiny_pair, tmp_path, out, 1_000_000, 2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_step(out, 3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = read_state(out)
    assert state.state == "crashed"
    status = subprocess.run(_kd("status", str(out)), capture_output=True, text=True)
    assert "crashed" in status.stdout and state.record.resume_command in status.stdout
    # The command as printed, less the iterations left (flags override the saved kd.toml).
    step = state.last_step["step"]
    cmd = shlex.split(state.record.resume_command) + ["--iters", str(step + 2), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    state = read_state(out)
    assert state.state == "finished" and state.record.events_offset > 0
    assert state.last_step["step"] == step + 2
    assert (out / "quick" / "adapters.safetensors").is_file()


def test_a_word_sent_before_the_run_follows_its_control_file_counts(tmp_path: Path) -> None:
    """The dashboard may send `pause` as soon as run.json names the trainer, while the
    trainer is still importing MLX: the control file was emptied when the run took the
    folder, so whatever is in it when the run starts following it is for this run."""
    from kd_core.run.control import RunControl

    w = RunWriter.open(tmp_path / "out", [], resume=False, extra=[])
    try:
        with open(w.control_path, "a") as fh:
            fh.write("pause\n")
        control = RunControl()
        control.follow_file(w.control_path, interval=0.01, skip_existing=False)
        deadline = time.monotonic() + 5
        while not control.paused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert control.paused
        control.request_stop()  # ends the polling thread
    finally:
        w.close(0)


# ---- a damaged run.json ----------------------------------------------------------------------
def _damaged_run(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    w = RunWriter.open(out, ["kd", "distill"], resume=False, extra=[])
    for i in range(1, 4):
        w(_step(i))
    (run_dir(out) / CONFIG_FILE).write_text(f'output = "{out}"\n')  # as kd distill writes
    os.close(w._fd)  # the process is gone; then its record is damaged
    (run_dir(out) / RECORD_FILE).write_text('{"pid": 12, "host": "h", "sta')
    return out


def _distill_into(out: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`kd distill` into `out` (a teacher that does not exist: it never gets to train)."""
    cmd = [sys.executable, "-m", "kd_core", "distill", "--output", str(out), "--domain", "task"]
    cmd += ["--teacher", str(tmp_path / "no-teacher"), "--student", str(tmp_path / "no-student")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)


def _status(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["status", str(out)])
    return rc, capsys.readouterr().out.strip()


def test_a_damaged_record_is_one_story_for_status_and_distill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kd status` said "no runs" while `kd distill` said "in use by a live run", and a fresh
    run would have truncated the events. Both now say the same line: the record is
    damaged, the lock, the last event, and what to do."""
    out = _damaged_run(tmp_path)
    events = (run_dir(out) / EVENTS_FILE).read_bytes()
    rc, said = _status(out, capsys)
    assert rc == 0 and "\n" not in said
    assert f"record {run_dir(out) / RECORD_FILE} is damaged (not valid JSON)" in said
    assert "its lock is free" in said and describe(_step(3)).text in said
    assert "--resume" in said and "another --output" in said
    refused = _distill_into(out, tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip() == f"kd: error: {said}"
    assert (run_dir(out) / EVENTS_FILE).read_bytes() == events, "nothing written is lost"
    # A process holds the lock (here: this one): both say so, in the same words again.
    fd = acquire_lock(out)
    try:
        rc, said = _status(out, capsys)
        assert rc == 0 and "its lock is held" in said and "echo stop >>" in said
        refused = _distill_into(out, tmp_path)
        assert refused.returncode == 2 and refused.stderr.strip() == f"kd: error: {said}"
    finally:
        os.close(fd)
    assert find_states(out) == []  # no state to show: the line above is what is known


def test_a_resume_continues_a_run_whose_record_is_damaged(tmp_path: Path) -> None:
    out = _damaged_run(tmp_path)
    size = (run_dir(out) / EVENTS_FILE).stat().st_size
    with pytest.raises(DamagedRecordError, match="is damaged"):
        RunWriter.open(out, ["kd", "distill"], resume=False, extra=[])
    w = RunWriter.open(out, ["kd", "distill", "--resume"], resume=True, extra=[])
    w(_step(4))
    w.close(0)
    assert read_record(out).events_offset == size and read_state(out).last_step["step"] == 4
    kept = run_dir(out) / (RECORD_FILE + ".damaged")
    assert kept.read_text() == '{"pid": 12, "host": "h", "sta', "the damaged record is kept"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[]", "not a JSON object"),
        ('{"pid": "12"}', "'pid' is \"12\""),
        ('{"pid": true}', "'pid' is true"),
        ('{"pid": 1, "host": "h"}', "no started, output"),
        (
            '{"pid": 1, "host": "h", "started": "s", "output": "o", "events_offset": -0.5}',
            "'events_offset' is -0.5",
        ),
    ],
)
def test_a_record_of_the_wrong_shape_is_damaged(tmp_path: Path, text: str, why: str) -> None:
    out = tmp_path / "out"
    run_dir(out).mkdir(parents=True)
    (run_dir(out) / RECORD_FILE).write_text(text)
    assert read_record(out) is None and why in record_damage(out)
