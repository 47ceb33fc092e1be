"""Whole runs with the teacher behind `kd serve-teacher` on 127.0.0.1 against the same runs
with the teacher in-process (kd_core/remote/connect.py, remote_pass.py, step_targets.py).

Tolerances. Offline: none — the server runs the in-process teacher pass's own code (same
prompt fitting, seeding, batch generator, soft_targets with the same CPU-stream split) and the
cache stores float16 either way, so the cache files hold identical tensors (only the
`seconds` metadata differs) and the adapters are identical bytes. Online and on-policy: a
remote step trains on the server's top-k at T (float16) where the in-process step sees the
full distribution; the targets themselves equal the in-process soft_targets rounded to
float16 exactly, and with top_k = the whole vocabulary the first step's KD equals the
in-process one within 0.5% (float16 rounding of the targets)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import build_sp_student

from kd_core.config import ConfigError, KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.errors import TeacherGone
from kd_core.events import CacheUsed, Log, Step
from kd_core.examples.batch import Example, SoftTargets, TeacherTokens
from kd_core.remote import RetryPolicy, TeacherUnavailable, make_teacher
from kd_core.remote.server import TeacherServer
from kd_core.remote.step_targets import RemoteStepTargets
from kd_core.vocab.plan import plan_vocab_alignment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_pair, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_CACHE_DIR", str(tmp_path_factory.mktemp("server-cache")))
        srv = TeacherServer(str(tiny_pair.teacher), port=0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sp_student(tmp_path_factory) -> Path:
    return build_sp_student(tmp_path_factory.mktemp("sp"))


def cfg(tmp_path: Path, name: str, **kw) -> KDConfig:
    base = dict(
        num_iters=2,
        max_tokens=8,
        batch_size=2,
        max_seq_length=64,
        steps_per_save=2,
        output=str(tmp_path / name),
    )
    return KDConfig(**{**base, **kw})


def run(
    teacher: str, student: Path, config: KDConfig, cache: Path, resume: bool = False, **kw
) -> list:
    events: list = []
    TrueKnowledgeDistiller(
        teacher, str(student), config, on_event=events.append, cache_dir=cache, **kw
    ).distill_domain("task", resume=resume)
    return events


def tensors(path: Path) -> tuple[dict, dict]:
    arrays, meta = mx.load(str(path), return_metadata=True)
    meta = {k: v for k, v in meta.items() if k != "seconds"}  # how long it took: differs
    return {k: np.array(v) for k, v in arrays.items()}, meta


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.safetensors"))
    assert names == sorted(p.name for p in b.glob("*.safetensors")) and names
    for name in names:
        (ta, ma), (tb, mb) = tensors(a / name), tensors(b / name)
        assert ma == mb and ta.keys() == tb.keys(), name
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{name}:{k}")


def adapters(out: Path) -> bytes:
    return (out / "task" / "adapters.safetensors").read_bytes()


@pytest.mark.parametrize("student", ["same", "sp"])
def test_offline_run_through_the_server_equals_the_in_process_one(
    tiny_pair, served, sp_student, tmp_path, student
):
    s = tiny_pair.student if student == "same" else sp_student
    remote = run(served.url, s, cfg(tmp_path, "remote"), tmp_path / "c-remote")
    run(str(tiny_pair.teacher), s, cfg(tmp_path, "local"), tmp_path / "c-local")
    same_files(tmp_path / "c-remote" / "teacher", tmp_path / "c-local" / "teacher")
    assert adapters(tmp_path / "remote") == adapters(tmp_path / "local")
    said = [e.message for e in remote if isinstance(e, Log)]
    assert any(m.startswith("remote teacher ") and "vocabulary 384" in m for m in said)
    assert not any(m.startswith("loading teacher") for m in said)
    # Keyed by what the server serves: the in-process teacher finds the remote one's cache.
    again = run(str(tiny_pair.teacher), s, cfg(tmp_path, "again"), tmp_path / "c-remote")
    assert [e.hit for e in again if isinstance(e, CacheUsed)] == [True]


def test_step_targets_equal_the_in_process_soft_targets(tiny_pair, served):
    from kd_core.models.load import load_model
    from kd_core.runtime.cpu_streams import stream_count
    from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets

    model, tok = load_model(tiny_pair.teacher)
    config = KDConfig(top_k=8, max_seq_length=64)
    plan = plan_vocab_alignment(tok, tok, 384, 384, "auto", "pieces")
    rng = np.random.default_rng(0)
    examples = []
    for n, p in ((20, 6), (31, 9), (12, 4)):
        seq = rng.integers(4, 384, size=n).astype(np.int32)
        examples.append(Example(seq, p, seq[:p], TeacherTokens(seq, p)))
    filled = RemoteStepTargets(make_teacher(served.url), config, plan).fill(
        [examples[:2], [examples[2]]]
    )
    assert [len(m) for m in filled] == [2, 1]
    seqs = [e.tokens for e in examples]
    want_ids, want_lps, _ = soft_targets(
        model, seqs, [e.prompt_len for e in examples], config, streams=stream_count(0, FWD_CHUNK)
    )
    for e, ids, lps in zip([*filled[0], *filled[1]], want_ids, want_lps, strict=True):
        t = e.targets
        assert isinstance(t, SoftTargets) and t.topk_ids.shape == (len(e.tokens) - e.prompt_len, 8)
        np.testing.assert_array_equal(t.topk_ids, ids)
        np.testing.assert_array_equal(t.topk_logprobs, lps.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("student", ["same", "sp"])
@pytest.mark.parametrize(("mode", "ratio"), [("online", 0.0), ("offline", 1.0)])
def test_online_and_on_policy_steps_through_the_server(
    tiny_pair, served, sp_student, tmp_path, mode, ratio, student
):
    """With top_k = the vocabulary the server's targets are the whole distribution: the first
    step's KD is the in-process online (or on-policy) step's, up to float16 rounding; across
    tokenizers (the SP student) the server's top-k are split and read in the student's pieces
    on the host, as the offline cache's are."""
    s = tiny_pair.student if student == "same" else sp_student
    kw = dict(teacher_mode=mode, on_policy_ratio=ratio, top_k=384)
    remote = run(served.url, s, cfg(tmp_path, "r", **kw), tmp_path / "c")
    local = run(str(tiny_pair.teacher), s, cfg(tmp_path, "l", **kw), tmp_path / "c")
    r_steps = [e for e in remote if isinstance(e, Step)]
    l_steps = [e for e in local if isinstance(e, Step)]
    assert [e.on_policy for e in r_steps] == [ratio > 0] * 2 == [e.on_policy for e in l_steps]
    assert r_steps[0].kd == pytest.approx(l_steps[0].kd, rel=5e-3)
    assert r_steps[0].ce == pytest.approx(l_steps[0].ce, rel=1e-6)
    assert all(np.isfinite(e.combined) for e in r_steps)
    assert all(e.teacher_tokens_per_second > 0 for e in r_steps)  # the dashboard's figure
    assert all(e.teacher_tokens_per_second == 0 for e in l_steps)


def test_modes_a_remote_teacher_cannot_serve_are_one_line(tiny_pair, served, tmp_path):
    bad = cfg(tmp_path, "b", teacher_api="mlx_lm", on_policy_ratio=0.5, temperature=1.0, top_k=11)
    with pytest.raises(ConfigError, match="^teacher_api: 'mlx_lm' serves the offline pass only"):
        run(served.url, tiny_pair.student, bad, tmp_path / "c")
    with pytest.raises(ConfigError, match="^top_k: 32 is more than mlx_lm.server returns"):
        run(
            served.url,
            tiny_pair.student,
            cfg(tmp_path, "k", teacher_api="mlx_lm", temperature=1.0),
            tmp_path / "c",
        )
    with pytest.raises(ConfigError, match="^temperature: 2 cannot be served by teacher_api 'vllm'"):
        run(served.url, tiny_pair.student, cfg(tmp_path, "v", teacher_api="vllm"), tmp_path / "c")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(teacher: Path, port: int, cache: Path) -> subprocess.Popen:
    """`kd serve-teacher` in a process of its own, once it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kd_core",
            "serve-teacher",
            "--model",
            str(teacher),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KD_CACHE_DIR": str(cache)},
    )
    probe = make_teacher(f"http://127.0.0.1:{port}", policy=RetryPolicy(retries=0))
    deadline = time.monotonic() + 120
    while True:
        try:
            probe.info()
            return proc
        except TeacherUnavailable:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)


def test_server_killed_mid_run_stops_with_a_checkpoint_and_resume_is_exact(tiny_pair, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kw = dict(teacher_mode="online", num_iters=5, steps_per_save=10)
    proc = serve(tiny_pair.teacher, port, tmp_path / "srv")
    try:
        run(url, tiny_pair.student, cfg(tmp_path, "whole", **kw), tmp_path / "c")

        def kill_at_step_2(e) -> None:
            if isinstance(e, Step) and e.step == 2:
                proc.kill()
                proc.wait()

        t0 = time.monotonic()
        with pytest.raises(TeacherGone) as gone:
            TrueKnowledgeDistiller(
                url, str(tiny_pair.student), cfg(tmp_path, "cut", **kw),
                on_event=kill_at_step_2, cache_dir=tmp_path / "c",
            ).distill_domain("task")  # fmt: skip
        assert time.monotonic() - t0 < 60  # timeouts and bounded retries, no hang
        message = str(gone.value)
        assert "\n" not in message and f"127.0.0.1:{port}" in message
        assert "stopped after step 2 with a checkpoint" in message
        assert (tmp_path / "cut" / "task" / "checkpoint_2").is_dir()
        proc = serve(tiny_pair.teacher, port, tmp_path / "srv")
        events: list = []
        TrueKnowledgeDistiller(
            url, str(tiny_pair.student), cfg(tmp_path, "cut", **kw),
            on_event=events.append, cache_dir=tmp_path / "c",
        ).distill_domain("task", resume=True)  # fmt: skip
        assert [e.step for e in events if isinstance(e, Step)] == [3, 4, 5]
        assert adapters(tmp_path / "cut") == adapters(tmp_path / "whole")
    finally:
        proc.kill()
        proc.wait()


def test_a_server_with_another_model_is_refused_on_resume(tiny_pair, tmp_path):
    """Same address, other weights (same shapes and tokenizer recipe): the checkpoint's
    teacher fingerprint is not the server's, and --resume says so in one line."""
    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model

    other = tmp_path / "other"
    model, config = new_llama(LlamaSize(64, 2, 128, 4), 384, seed=7)
    save_model(model, config, other, tiny_pair.tokenizer, eos_id(tiny_pair.tokenizer))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(tiny_pair.teacher, port, tmp_path / "srv")
    try:
        run(url, tiny_pair.student, cfg(tmp_path, "o"), tmp_path / "c")
        proc.kill()
        proc.wait()
        proc = serve(other, port, tmp_path / "srv")
        with pytest.raises(ValueError, match=f"^resume: the teacher's weights at {url} changed"):
            run(url, tiny_pair.student, cfg(tmp_path, "o", num_iters=4), tmp_path / "c", True)
    finally:
        proc.kill()
        proc.wait()


def test_cli_exit_status_says_the_teacher_was_lost(tiny_pair, tmp_path, capsys):
    """`kd distill` through the command line: the server killed while it trains (a watcher
    of the run's event file kills it after the first step) -> exit status 4, one line, the
    run record says 4 and a checkpoint holds the last finished step."""
    import json
    import threading

    from kd_core.cli import EXIT_TEACHER_GONE, main

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    args = ["distill", "--teacher", url, "--student", str(tiny_pair.student), "--quiet"]
    args += ["--output", str(out), "--domain", "task", "--teacher-mode", "online"]
    args += ["--max-tokens", "8", "--batch-size", "2", "--max-seq-length", "64"]
    args += ["--teacher-token", "never-written-token-42"]  # loopback needs none; sent anyway
    proc = serve(tiny_pair.teacher, port, tmp_path / "srv")

    def kill_after_first_step() -> None:
        events = out / ".kd-run" / "events.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if events.exists() and '"kind": "step"' in events.read_text().replace('":"', '": "'):
                break
            time.sleep(0.01)
        proc.kill()

    watcher = threading.Thread(target=kill_after_first_step, daemon=True)
    watcher.start()
    try:
        status = main([*args, "--iters", "2000", "--steps-per-save", "1000"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_TEACHER_GONE == 4
    assert err[-1].startswith(f"kd: teacher lost: task: kd teacher at 127.0.0.1:{port}: ")
    assert "with a checkpoint: run again with --resume once the teacher is back" in err[-1]
    record = json.loads((out / ".kd-run" / "run.json").read_text())
    assert record["exit_status"] == 4
    for f in (out / ".kd-run").iterdir():  # the token is in no file of the run folder
        assert b"never-written-token-42" not in f.read_bytes(), f.name
    assert list((out / "task").glob("checkpoint_*"))
    assert main(["distill", "--teacher", url, "--student", str(tiny_pair.student)]) == 4
    assert main(["eval", "--teacher", url]) == 2  # kd eval needs the teacher in-process
    assert capsys.readouterr().err.strip().endswith("not the server's address")


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_given_text_through_the_server_equals_the_in_process_run(tiny_pair, served, tmp_path, mode):
    """A data file's answers (issue 25's given text) scored by the server: offline the same
    cache file and adapters as in-process; online the server scores each step's rows."""
    import json

    from kd_core.data_files.domain import DataSettings, load_data_domain

    rows = [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dom = load_data_domain(str(data), DataSettings(), 0)

    def go(teacher: str, name: str) -> list:
        events: list = []
        TrueKnowledgeDistiller(
            teacher, str(tiny_pair.student), cfg(tmp_path, name, teacher_mode=mode, top_k=8),
            on_event=events.append, cache_dir=tmp_path / f"c-{name}",
        ).run({"d": dom})  # fmt: skip
        return events

    remote, local = go(served.url, "remote"), go(str(tiny_pair.teacher), "local")
    if mode == "offline":
        same_files(tmp_path / "c-remote" / "teacher", tmp_path / "c-local" / "teacher")
        assert (tmp_path / "remote/d/adapters.safetensors").read_bytes() == (
            tmp_path / "local/d/adapters.safetensors"
        ).read_bytes()
    else:
        r_steps = [e for e in remote if isinstance(e, Step)]
        assert len(r_steps) == 2 and all(e.teacher_tokens_per_second > 0 for e in r_steps)
        l_steps = [e for e in local if isinstance(e, Step)]
        assert r_steps[0].ce == pytest.approx(l_steps[0].ce, rel=1e-6)


def test_a_long_remote_teacher_pass_reports_progress_and_stops(
    tiny_pair, served, tmp_path, monkeypatch
):
    """While /v1/generate runs, the server's progress (read from /v1/info) reaches the run's
    events; a stop then ends the pass at once, nothing cached, no step trained."""
    import kd_core.remote.remote_pass as remote_pass
    from kd_core.events import Progress
    from kd_core.run.control import RunControl

    monkeypatch.setattr(remote_pass, "POLL_S", 0.05)  # a tiny teacher answers fast
    control = RunControl()
    events: list = []

    def sink(e) -> None:
        events.append(e)
        if isinstance(e, Progress) and e.message == "generating" and e.done < e.total:
            control.request_stop()

    prompts = [f"Explain topic number {i} of the standard library at length." for i in range(120)]
    config = cfg(tmp_path, "p", max_tokens=200, max_seq_length=256)
    TrueKnowledgeDistiller(
        served.url, str(tiny_pair.student), config, on_event=sink, control=control,
        cache_dir=tmp_path / "c",
    ).run({"long": prompts})  # fmt: skip
    seen = [e for e in events if isinstance(e, Progress) and e.message == "generating"]
    assert seen and seen[0].total == 120
    assert not any(isinstance(e, Step | CacheUsed) for e in events)
    assert any(
        isinstance(e, Log) and "stopped during the teacher pass" in e.message for e in events
    )
    assert not list((tmp_path / "c" / "teacher").glob("long-*.safetensors"))
