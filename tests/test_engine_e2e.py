"""End to end on a tiny teacher/student built in the test: CLI, outputs, cache, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from kd_core.config import KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import CacheUsed, Log, RunFinished, Step, event_from_json
from kd_core.run.control import RunControl

pytestmark = pytest.mark.slow

FAST = [
    "--iters",
    "6",
    "--max-tokens",
    "12",
    "--steps-per-save",
    "3",
    "--batch-size",
    "2",
    "--max-seq-length",
    "64",
    "--learning-rate",
    "0.01",
]


def small_config(out, **kw) -> KDConfig:
    base = dict(
        num_iters=6,
        max_tokens=12,
        steps_per_save=3,
        batch_size=2,
        max_seq_length=64,
        learning_rate=0.01,
        output=str(out),
    )
    return KDConfig(**{**base, **kw})


def test_cli_distils_two_domains_and_outputs_load(tiny_pair, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "kd_core",
        "--domain",
        "thinking",
        "--domain",
        "task",
        "--teacher",
        str(tiny_pair.teacher),
        "--student",
        str(tiny_pair.student),
        "--output",
        str(out),
        "--events",
        "jsonl",
        *FAST,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [event_from_json(line) for line in proc.stdout.splitlines()]
    assert isinstance(events[-1], RunFinished) and not events[-1].stopped
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps if s.domain == "task"] == [1, 2, 3, 4, 5, 6]

    summary = json.loads((out / "kd_summary.json").read_text())
    assert set(summary["domains"]) == {"thinking", "task"}
    for domain in ("thinking", "task"):
        d = out / domain
        for name in (
            "adapters.safetensors",
            "adapter_config.json",
            "metrics.jsonl",
            "checkpoint_3/adapters.safetensors",
            "checkpoint_6/adapters.safetensors",
        ):
            assert (d / name).is_file(), name
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 7))
        r = summary["domains"][domain]
        for key in (
            "final_kd_loss",
            "final_ce_loss",
            "final_combined_loss",
            "training_time_seconds",
            "adapter_path",
        ):
            assert key in r
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert cfg["fine_tune_type"] == "lora" and cfg["kd"]["temperature"] == 2.0

    # mlx-lm loads the adapter, and it changes the student's logits.
    x = mx.array([[5, 6, 7, 8, 9]])
    base, _ = load(str(tiny_pair.student))
    tuned, _ = load(str(tiny_pair.student), adapter_path=str(out / "thinking"))
    diff = np.abs(np.array(base(x)) - np.array(tuned(x))).max()
    assert diff > 1e-4


def test_rerun_reuses_teacher_cache_without_loading_teacher(tiny_pair, tmp_path):
    events: list = []
    d = TrueKnowledgeDistiller(
        str(tiny_pair.teacher),
        str(tiny_pair.student),
        small_config(tmp_path / "a", num_iters=2),
        on_event=events.append,
    )
    d.distill_domain("memory")
    first = [e for e in events if isinstance(e, CacheUsed)]
    assert first and not first[0].hit
    events.clear()
    d2 = TrueKnowledgeDistiller(
        str(tiny_pair.teacher),
        str(tiny_pair.student),
        small_config(tmp_path / "b", num_iters=2),
        on_event=events.append,
    )
    d2.distill_domain("memory")
    again = [e for e in events if isinstance(e, CacheUsed)]
    assert again[0].hit and again[0].path == first[0].path
    assert not any(isinstance(e, Log) and "loading teacher" in e.message for e in events)
    # another loss temperature must not reuse targets softened at T = 2
    events.clear()
    d3 = TrueKnowledgeDistiller(
        str(tiny_pair.teacher),
        str(tiny_pair.student),
        small_config(tmp_path / "c", num_iters=2, temperature=4.0),
        on_event=events.append,
    )
    d3.distill_domain("memory")
    third = [e for e in events if isinstance(e, CacheUsed)][0]
    assert not third.hit and third.path != first[0].path


def test_stop_then_resume_continues_from_checkpoint(tiny_pair, tmp_path):
    control = RunControl()

    def stop_at_3(e):
        if isinstance(e, Step) and e.step == 3:
            control.request_stop()

    cfg = small_config(tmp_path / "run", steps_per_save=100)
    d = TrueKnowledgeDistiller(
        str(tiny_pair.teacher), str(tiny_pair.student), cfg, on_event=stop_at_3, control=control
    )
    r = d.distill_domain("debug")
    assert r.stopped and r.steps == 3
    assert (tmp_path / "run" / "debug" / "checkpoint_3" / "trainer_state.json").is_file()

    events: list = []
    d2 = TrueKnowledgeDistiller(
        str(tiny_pair.teacher), str(tiny_pair.student), cfg, on_event=events.append
    )
    r2 = d2.distill_domain("debug", resume=True)
    assert r2.resumed_from == 3 and r2.steps == 6 and not r2.stopped
    assert [e.step for e in events if isinstance(e, Step)] == [4, 5, 6]
    rows = (tmp_path / "run" / "debug" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in rows] == [1, 2, 3, 4, 5, 6]

    # The resumed adapters equal those of an uninterrupted run with the same seed.
    straight = TrueKnowledgeDistiller(
        str(tiny_pair.teacher),
        str(tiny_pair.student),
        small_config(tmp_path / "straight", steps_per_save=100),
    )
    straight.distill_domain("debug")
    a = mx.load(str(tmp_path / "run" / "debug" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "straight" / "debug" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(np.array(a[k]), np.array(b[k]), atol=1e-5), k


def test_online_mode_trains(tiny_pair, tmp_path):
    d = TrueKnowledgeDistiller(
        str(tiny_pair.teacher),
        str(tiny_pair.student),
        small_config(tmp_path / "on", num_iters=3, teacher_mode="online"),
    )
    r = d.distill_domain("action")
    assert r.steps == 3 and np.isfinite(r.final_kd_loss) and r.final_kd_loss > 0
