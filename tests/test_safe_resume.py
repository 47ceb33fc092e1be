"""Nothing lost, nothing silently wrong (engine side): resume only what fits, fall back past
damaged checkpoints, long prompts cut and counted, stop during the teacher pass, and the
small refusals. Each of these ran on the earlier code and exited 0 with unusable output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kd_core.cli import EXIT_STOPPED, main
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import Progress, RunFinished
from kd_core.examples.same_vocab import build_examples
from kd_core.models.identity import ModelIdentity
from kd_core.run.control import RunControl
from kd_core.teacher.cache import TeacherOutputs

pytestmark = pytest.mark.slow

FAST = ["--max-tokens", "10", "--batch-size", "2", "--max-seq-length", "64"]


def _args(tiny_pair, out: Path, *extra: str, teacher=None, student=None) -> list[str]:
    return [
        "distill",
        "--teacher",
        str(teacher or tiny_pair.teacher),
        "--student",
        str(student or tiny_pair.student),
        "--output",
        str(out),
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def base_run(tiny_pair, tmp_path_factory):
    """Six steps of `task`, a checkpoint every two steps; returns the output folder."""
    out = tmp_path_factory.mktemp("base") / "o"
    args = _args(tiny_pair, out, "--domain", "task", "--iters", "6", "--steps-per-save", "2")
    assert main(args) == 0
    return out


def _fresh_copy(base_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "o"
    shutil.copytree(base_run, out)
    return out


@pytest.mark.parametrize(
    "change,field",
    [
        (["--lora-rank", "8"], "lora_rank"),
        (["--temperature", "3"], "temperature"),
        (["--alpha", "0.5"], "alpha"),
        (["--learning-rate", "0.001"], "learning_rate"),
        ("teacher", "teacher"),
        ("student", "student"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_settings(
    tiny_pair, base_run, tmp_path, capsys, change, field
):
    out = _fresh_copy(base_run, tmp_path)
    for step in (4, 6):  # the newest left is checkpoint_2
        shutil.rmtree(out / "task" / f"checkpoint_{step}")
    before = {p: p.read_bytes() for p in (out / "task").glob("*.*")}
    kw = {}
    if change == "teacher":  # another teacher (the student's weights as teacher)
        kw["teacher"], extra = tiny_pair.student, []
    elif change == "student":  # another student: 2 x 64 instead of 2 x 32
        kw["student"], extra = tiny_pair.teacher, []
    else:
        extra = list(change)
    capsys.readouterr()
    rc = main(_args(tiny_pair, out, "--domain", "task", "--iters", "6", "--resume", *extra, **kw))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("kd: error: resume:") and "\n" not in err
    assert f"{field} = " in err and "checkpoint_2" in err and "--output" in err
    # Nothing of the earlier run was touched.
    assert {p: p.read_bytes() for p in (out / "task").glob("*.*")} == before


def test_resume_refuses_an_edited_prompt_file(tiny_pair, tmp_path, capsys):
    prompts = tmp_path / "notes.txt"
    prompts.write_text("Say hello.\nName a colour.\nCount to three.\n")
    out = tmp_path / "o"
    base = ["--domain-file", str(prompts), "--iters", "2", "--steps-per-save", "1"]
    assert main(_args(tiny_pair, out, *base)) == 0
    prompts.write_text("Say hello.\nName a colour.\nCount to four.\n")
    capsys.readouterr()
    assert main(_args(tiny_pair, out, *base, "--resume")) == 2
    assert "prompts = " in capsys.readouterr().err


def test_resume_falls_back_past_damaged_checkpoints(tiny_pair, base_run, tmp_path, capsys):
    out = _fresh_copy(base_run, tmp_path)
    final = (out / "task" / "adapters.safetensors").read_bytes()  # the uninterrupted run's
    (out / "task" / "checkpoint_6" / "adapters.safetensors").write_bytes(b"")
    (out / "task" / "checkpoint_4" / "optimizer.safetensors").write_bytes(b"")
    capsys.readouterr()
    rc = main(_args(tiny_pair, out, "--domain", "task", "--iters", "6", "--resume"))
    text = capsys.readouterr().out
    assert rc == 0
    assert "skipped checkpoint_6" in text and "checkpoint_6/adapters.safetensors" in text
    assert "skipped checkpoint_4" in text and "checkpoint_4/optimizer.safetensors" in text
    assert "resumed from checkpoint_2" in text
    assert (out / "task" / "adapters.safetensors").read_bytes() == final  # bit-exact


def test_a_garbled_metrics_file_does_not_block_resume(tiny_pair, base_run, tmp_path):
    out = _fresh_copy(base_run, tmp_path)
    shutil.rmtree(out / "task" / "checkpoint_6")
    metrics = out / "task" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'\xff\xfe{"step": tr\n{{{\n')
    assert main(_args(tiny_pair, out, "--domain", "task", "--iters", "6", "--resume")) == 0
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_long_prompts_are_cut_from_the_front_and_counted(tiny_pair, tmp_path):
    prompts = tmp_path / "mixed.txt"
    long_prompt = " ".join(["describe the weather in detail"] * 400)  # far past 64 tokens
    prompts.write_text(f"Say hello.\n{long_prompt}\nName a colour.\n")
    out = tmp_path / "o"
    assert main(_args(tiny_pair, out, "--domain-file", str(prompts), "--iters", "3")) == 0
    entry = json.loads((out / "kd_summary.json").read_text())["domains"]["mixed"]
    assert entry["examples"] == 3 and entry["examples_cut"] == 1
    assert entry["examples_skipped"] == 0
    rows = [json.loads(x) for x in (out / "mixed" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens"] > 0 for r in rows)  # every step trains on something


def test_a_tiny_max_seq_length_still_trains(tiny_pair, tmp_path):
    out = tmp_path / "o"
    args = _args(tiny_pair, out, "--domain", "memory", "--iters", "2")
    args[args.index("--max-seq-length") + 1] = "8"
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "memory" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens"] > 0 for r in rows)


def test_no_example_left_is_refused_with_the_counts(tiny_pair):
    from mlx_lm.utils import load_tokenizer

    from kd_core.distiller import NoExamplesError  # noqa: F401  (the CLI maps it to status 2)
    from kd_core.vocab.plan import plan_vocab_alignment

    tok = load_tokenizer(tiny_pair.teacher)
    al = plan_vocab_alignment(tok, tok, 384, 384)
    empty = TeacherOutputs(
        [__import__("numpy").array([1, 2, 3], "int32")] * 2, [3, 3], None, None, 384
    )
    ex = build_examples(["a", "b"], empty, tok, al, online=True, max_seq_length=64)
    assert ex.examples == [] and ex.skipped == 2


def test_stop_during_the_teacher_pass_is_honoured(tiny_pair, tmp_path):
    """Many prompts, long answers: a stop at the first progress report ends the pass early,
    the run says it stopped and that nothing was saved, and training never starts."""
    prompts = [f"Write a long story about the number {i}." for i in range(300)]
    control = RunControl()
    events: list = []

    def on_event(e):
        events.append(e)
        if isinstance(e, Progress) and e.phase == "teacher":
            control.request_stop()

    from kd_core.config import KDConfig

    cfg = KDConfig(max_tokens=200, batch_size=2, max_seq_length=256, output=str(tmp_path / "o"))
    d = TrueKnowledgeDistiller(
        str(tiny_pair.teacher), str(tiny_pair.student), cfg, on_event=on_event, control=control
    )
    t0 = time.monotonic()
    assert d.run({"long": prompts}) == []
    assert time.monotonic() - t0 < 60
    progress = [e for e in events if isinstance(e, Progress) and e.phase == "teacher"]
    assert progress[-1].done < progress[-1].total
    last = events[-1]
    assert isinstance(last, RunFinished) and last.stopped and last.results == []
    from kd_core.events import describe

    assert "no checkpoint was saved" in describe(last).text
    assert not (tmp_path / "o" / "long" / "adapters.safetensors").exists()


def test_stop_word_on_stdin_exits_with_the_stopped_status(tiny_pair, tmp_path):
    cmd = [sys.executable, "-m", "kd_core", *_args(tiny_pair, tmp_path / "o")[1:]]
    cmd += ["--domain", "task", "--iters", "100000", "--control-stdin", "--events", "jsonl"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    for line in proc.stdout:  # stop at the first training step
        if '"kind":"step"' in line:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED
    last = json.loads(out.strip().splitlines()[-1])
    assert last["kind"] == "run_finished" and last["stopped"]


def test_summary_keeps_each_domains_own_settings(tiny_pair, tmp_path):
    out = tmp_path / "o"
    assert main(_args(tiny_pair, out, "--domain", "task", "--iters", "1")) == 0
    args = _args(tiny_pair, out, "--domain", "memory", "--iters", "1", "--temperature", "3")
    assert main(args) == 0
    domains = json.loads((out / "kd_summary.json").read_text())["domains"]
    assert domains["task"]["config"]["temperature"] == 2.0
    assert domains["memory"]["config"]["temperature"] == 3.0


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--lora-layers", "0"], "lora_layers: 0 is not allowed"),
        (["--distributed", "0"], "--distributed"),
    ],
)
def test_small_refusals(tiny_pair, tmp_path, capsys, extra, words):
    rc = main(_args(tiny_pair, tmp_path / "o", "--domain", "task", "--iters", "1", *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and "\n" not in err


def test_unwritable_cache_is_refused_before_the_teacher_runs(
    tiny_pair, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("KD_CACHE_DIR", str(blocker))
    rc = main(_args(tiny_pair, tmp_path / "o", "--domain", "task", "--iters", "1"))
    captured = capsys.readouterr()
    assert rc == 2 and "cache" in captured.err and str(blocker) in captured.err
    assert "loading teacher" not in captured.out  # refused before any generation


def test_eval_json_path_is_checked_before_the_work(tiny_pair, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(
        [
            "eval",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.student),
            "--json",
            str(blocker / "out.json"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "json" in err and "\n" not in err


def test_teacher_equal_to_student_is_warned(tiny_pair, tmp_path, capsys):
    args = _args(tiny_pair, tmp_path / "o", "--domain", "task", "--iters", "1")
    args[args.index("--student") + 1] = str(tiny_pair.teacher)
    assert main(args) == 0
    assert "teacher and student are the same model" in capsys.readouterr().out


def test_a_rewritten_control_file_is_obeyed(tmp_path):
    path = tmp_path / "control"
    path.write_text("resume\nresume\n")
    control = RunControl()
    control.follow_file(path, interval=0.05)
    time.sleep(0.2)
    path.write_text("stop\n")  # `echo stop > control`, not `>>`
    deadline = time.monotonic() + 5
    while not control.stop_requested and time.monotonic() < deadline:
        time.sleep(0.05)
    assert control.stop_requested


def test_control_file_appended_is_still_obeyed(tmp_path):
    path = tmp_path / "control"
    control = RunControl()
    control.follow_file(path, interval=0.05)
    with open(path, "a") as fh:
        fh.write("pause\n")
    deadline = time.monotonic() + 5
    while not control.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert control.paused
    threading.Thread(target=lambda: (time.sleep(0.1), path.open("a").write("resume\n"))).start()
    deadline = time.monotonic() + 5
    while control.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not control.paused


def test_a_stopped_teacher_pass_keeps_its_finished_responses(tiny_pair, tmp_path):
    """Responses finished before a stop are kept beside the cache; the next pass generates
    only the rest and keeps those it has (the cache is resumable per prompt)."""
    from mlx_lm import load

    from kd_core.config import KDConfig
    from kd_core.generate import GenerationStopped
    from kd_core.teacher.teacher_pass import TeacherPass

    model, tok = load(str(tiny_pair.teacher))
    # Prompts of many lengths: their token budgets differ, so they finish at different steps.
    prompts = [" ".join(["word"] * n) for n in range(2, 26, 2)]
    cfg = KDConfig(max_tokens=60, max_seq_length=64)
    tpass = TeacherPass(tmp_path / "cache", ModelIdentity("t", "fp", "tok"), cfg)
    calls = []

    def stop_after_45() -> bool:
        calls.append(1)
        return len(calls) >= 45

    with pytest.raises(GenerationStopped) as stopped:
        tpass.run("d", prompts, False, lambda: (model, tok), should_stop=stop_after_45)
    kept = stopped.value.done
    assert 0 < kept < len(prompts)
    partial = list((tmp_path / "cache" / "teacher").glob("*.partial.safetensors"))
    assert len(partial) == 1
    from kd_core.teacher.cache import load_partial

    first = load_partial(partial[0], tpass.paths("d", prompts)[0])
    assert len(first) == kept
    generated: list[int] = []

    def count(done: int, total: int, what: str) -> None:
        generated.append(total)

    out = tpass.run("d", prompts, False, lambda: (model, tok), progress=count)
    assert len(out.sequences) == len(prompts)
    assert max(generated) == len(prompts) - kept  # only the rest was generated
    for i, (seq, plen) in first.items():
        assert (out.sequences[i] == seq).all() and out.prompt_lens[i] == plen
    assert not partial[0].exists()  # merged into the cache
