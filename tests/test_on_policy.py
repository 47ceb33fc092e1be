"""On-policy distillation on the tiny pair: which steps sample, what they train on, exact
resume, the fingerprint, and the bad inputs (one line naming the field, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from kd_core.cli import main
from kd_core.config import KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.evaluate import method_config
from kd_core.events import Step
from kd_core.models.identity import ModelIdentity
from kd_core.models.memory import MemoryEstimate
from kd_core.steps.fused import policy_config
from kd_core.train.checkpoints import run_fingerprint
from kd_core.train.on_policy import is_on_policy_step


def test_on_policy_steps_are_spread_evenly():
    for ratio in (0.0, 0.25, 0.5, 0.3, 1.0):
        picked = [s for s in range(1, 101) if is_on_policy_step(s, ratio)]
        assert len(picked) == round(100 * ratio)
    assert [s for s in range(1, 7) if is_on_policy_step(s, 0.5)] == [2, 4, 6]


def test_fingerprint_names_the_new_fields():
    kw = dict(
        teacher=ModelIdentity("t", "a", "ta"), student=ModelIdentity("s", "b", "tb"),
        vocab_strategy="truncate", prompts=["p"],
    )  # fmt: skip
    a = run_fingerprint(KDConfig(), **kw)
    for change in (
        {"divergence": "reverse_kl"},
        {"jsd_beta": 0.3},
        {"skew": 0.2},
        {"on_policy_ratio": 0.5},
        {"student_temperature": 0.7},
        {"on_policy_divergence": "reverse_kl"},
    ):
        b = run_fingerprint(KDConfig(**change), **kw)
        (key,) = change
        assert a[key] != b[key]


def _cfg(tmp_path: Path, name: str, **kw) -> KDConfig:
    base = dict(
        num_iters=4,
        max_tokens=8,
        batch_size=2,
        max_seq_length=64,
        on_policy_ratio=0.5,
        divergence="reverse_kl",
        steps_per_save=2,
        output=str(tmp_path / name),
    )
    return KDConfig(**{**base, **kw})


def _run(pair, cfg: KDConfig, resume: bool = False) -> list[Step]:
    events: list = []
    TrueKnowledgeDistiller(
        str(pair.teacher), str(pair.student), cfg, on_event=events.append
    ).distill_domain("task", resume=resume)
    return [e for e in events if isinstance(e, Step)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_on_policy_run_records_its_steps_and_resumes_exactly(tiny_pair, tmp_path, mode):
    steps = _run(tiny_pair, _cfg(tmp_path, "a", teacher_mode=mode))
    assert [e.on_policy for e in steps] == [False, True, False, True]
    assert all(e.sample_tokens_per_second > 0 for e in steps if e.on_policy)
    for e in steps:  # on-policy steps minimise the divergence alone (alpha = 1)
        assert np.isfinite(e.combined)
        if e.on_policy:
            assert e.combined == pytest.approx(e.kd, rel=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "a/task/metrics.jsonl").read_text().splitlines()]
    assert [r["on_policy"] for r in rows] == [False, True, False, True]
    assert rows[1]["sample_tokens"] > 0 and rows[0]["sample_tokens"] == 0
    # Stopped after step 2 (its checkpoint), resumed to 4: the same adapters, bit for bit.
    _run(tiny_pair, _cfg(tmp_path, "b", teacher_mode=mode, num_iters=2))
    again = _run(tiny_pair, _cfg(tmp_path, "b", teacher_mode=mode), resume=True)
    assert [e.step for e in again] == [3, 4]
    assert [e.combined for e in again] == [e.combined for e in steps[2:]]
    w1 = mx.load(str(tmp_path / "a/task/adapters.safetensors"))
    w2 = mx.load(str(tmp_path / "b/task/adapters.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert mx.array_equal(w1[k], w2[k]).item(), k


def test_on_policy_steps_take_their_own_divergence():
    # "same" (KDConfig's default, the original API): the on-policy steps use `divergence`.
    assert policy_config(KDConfig(divergence="jsd")).divergence == "jsd"
    mixed = KDConfig(divergence="forward_kl", on_policy_divergence="reverse_kl", alpha=0.5)
    pc = policy_config(mixed)
    assert (pc.divergence, pc.alpha) == ("reverse_kl", 1.0)
    # on_policy_X: X on the student's samples, the configuration's KD on the teacher's text
    # on the other half of the steps (README: reverse KL on both lost the held-out KL).
    m = method_config("on_policy_rkl", KDConfig())
    assert (m.divergence, m.on_policy_divergence, m.on_policy_ratio) == (
        "forward_kl",
        "reverse_kl",
        0.5,
    )
    assert method_config("on_policy_rkl", KDConfig(on_policy_ratio=0.25)).on_policy_ratio == 0.25
    assert method_config("ce_only", mixed).on_policy_divergence == "same"


@pytest.mark.slow
def test_on_policy_divergence_changes_only_the_on_policy_steps(tiny_pair, tmp_path):
    kw = dict(divergence="forward_kl", num_iters=2)
    same = _run(tiny_pair, _cfg(tmp_path, "same", **kw))
    rkl = _run(tiny_pair, _cfg(tmp_path, "rkl", on_policy_divergence="reverse_kl", **kw))
    assert [e.on_policy for e in rkl] == [False, True]
    assert rkl[0].kd == same[0].kd  # the off-policy step: forward KL in both
    # the on-policy step: the same weights and samples, reverse KL instead of forward
    assert rkl[1].sample_tokens_per_second > 0
    assert rkl[1].kd != pytest.approx(same[1].kd, rel=1e-3)


@pytest.mark.slow
def test_resume_refuses_another_divergence(tiny_pair, tmp_path, capsys):
    args = ["distill", "--domain", "task", "--teacher", str(tiny_pair.teacher)]
    args += ["--student", str(tiny_pair.student), "--iters", "2", "--max-tokens", "8"]
    args += ["--batch-size", "2", "--output", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0
    rc = main([*args, "--resume", "--divergence", "jsd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "divergence" in err[-1] and "forward_kl" in err[-1]


@pytest.mark.parametrize(
    "flag,value,field",
    [
        ("--jsd-beta", "1.0", "jsd_beta"),
        ("--jsd-beta", "0", "jsd_beta"),
        ("--skew", "1.5", "skew"),
        ("--skew", "-0.1", "skew"),
        ("--on-policy-ratio", "1.2", "on_policy_ratio"),
        ("--divergence", "kl", "divergence"),
        ("--on-policy-divergence", "kl", "on_policy_divergence"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(tmp_path, capsys, flag, value, field):
    out = tmp_path / "never"
    rc = main(["distill", "--domain", "task", flag, value, "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"kd: error: {field}:")
    assert not out.exists()


@pytest.mark.slow
def test_on_policy_with_a_teacher_that_cannot_load_is_refused(tiny_pair, tmp_path, capsys):
    """The teacher's targets are cached, but its weights are damaged: an on-policy run
    needs it resident and says so, naming the field, writing nothing."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_pair.teacher, teacher)
    args = ["distill", "--domain", "task", "--teacher", str(teacher)]
    args += ["--student", str(tiny_pair.student), "--iters", "1", "--max-tokens", "8"]
    args += ["--batch-size", "2", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "first")]) == 0
    for f in teacher.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    out = tmp_path / "policy"
    rc = main([*args, "--on-policy-ratio", "0.5", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("kd: error: on_policy_ratio: 0.5 needs the teacher")
    assert not out.exists()


def test_memory_preflight_refuses_an_on_policy_run_that_does_not_fit():
    cfg = KDConfig(on_policy_ratio=1.0)
    est = MemoryEstimate(1.0, 30.0, 16.0, resident_teacher_gb=20.0)
    msg = est.on_policy_refusal(cfg)
    assert msg is not None and msg.startswith("on_policy_ratio: 1 keeps the teacher")
    assert "\n" not in msg and "20.0 GB" in msg
    assert est.on_policy_refusal(KDConfig()) is None
    assert MemoryEstimate(1.0, 3.0, 16.0, 2.0).on_policy_refusal(cfg) is None
