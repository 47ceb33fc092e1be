"""kd eval: figures right on a case computable by hand; --compare writes the JSON shape."""

from __future__ import annotations

import json

import pytest

from kd_core.cli import main
from kd_core.config import KDConfig
from kd_core.evaluate import measure, teacher_reference

pytestmark = pytest.mark.slow


def test_student_equal_to_teacher_gives_zero_kl_full_agreement(tiny_pair):
    cfg = KDConfig(max_tokens=10, max_seq_length=64)
    prompts = ["Explain what a list is.", "Why is the sky blue?", "Name three colours."]
    ref = teacher_reference(str(tiny_pair.teacher), prompts, cfg, "hand")
    same = measure(ref, str(tiny_pair.teacher), None, cfg)
    assert same["kl"] == pytest.approx(0.0, abs=1e-3)
    assert same["top1_agreement"] == 1.0
    assert same["positions"] == ref.outputs.response_tokens
    other = measure(ref, str(tiny_pair.student), None, cfg)
    assert other["kl"] > 0.01 and other["top1_agreement"] < 1.0
    # CE of the teacher on its own text equals its entropy-weighted NLL, so it is finite.
    assert 0 < same["ce"] < other["ce"]


def test_eval_cli_table_and_json(tiny_pair, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(
        [
            "eval",
            "--domain",
            "memory",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.teacher),
            "--max-tokens",
            "8",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "KL(T||S)" in printed and "base" in printed
    data = json.loads(out.read_text())
    assert data["base"]["kl"] == pytest.approx(0.0, abs=1e-3)


def test_compare_reports_base_kd_ce_only(tiny_pair, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(
        [
            "eval",
            "--compare",
            "--domain",
            "task",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.student),
            "--iters",
            "3",
            "--max-tokens",
            "8",
            "--batch-size",
            "2",
            "--output",
            str(tmp_path / "cmp"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    for run in ("base", "kd", "ce_only"):
        assert set(data[run]) >= {"kl", "top1_agreement", "ce"}
    root = tmp_path / "cmp" / "compare"
    assert (root / "kd" / "task" / "adapters.safetensors").is_file()
    assert (root / "ce_only" / "task" / "adapters.safetensors").is_file()
    assert "KD vs CE-only" in capsys.readouterr().out


def test_reverse_kl_on_own_samples_is_zero_for_the_teacher_itself(tiny_pair):
    cfg = KDConfig(max_tokens=10, max_seq_length=64)
    prompts = ["Explain what a list is.", "Why is the sky blue?"]
    ref = teacher_reference(str(tiny_pair.teacher), prompts, cfg, "hand")
    same = measure(ref, str(tiny_pair.teacher), None, cfg)
    assert same["reverse_kl_on_student_samples"] == pytest.approx(0.0, abs=1e-4)
    other = measure(ref, str(tiny_pair.student), None, cfg)
    assert other["reverse_kl_on_student_samples"] > 0.01
    # Seeded: the same student's answers, hence the same figure.
    again = measure(ref, str(tiny_pair.student), None, cfg)
    assert again["reverse_kl_on_student_samples"] == other["reverse_kl_on_student_samples"]


def test_compare_methods_reports_every_metric_per_method(tiny_pair, tmp_path, capsys):
    out = tmp_path / "m.json"
    methods = ["ce_only", "offline_fkl", "online_jsd", "on_policy_rkl"]
    args = ["eval", "--compare", "--methods", ",".join(methods), "--domain", "task"]
    args += ["--teacher", str(tiny_pair.teacher), "--student", str(tiny_pair.student)]
    args += ["--iters", "2", "--max-tokens", "8", "--batch-size", "2"]
    rc = main([*args, "--output", str(tmp_path / "cmp"), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data) == {"base", "summary", *methods}
    for run in ("base", *methods):
        assert set(data[run]) >= {"kl", "top1_agreement", "ce", "reverse_kl_on_student_samples"}
    cfgs = data["summary"]["methods"]
    assert cfgs["on_policy_rkl"]["on_policy_divergence"] == "reverse_kl"
    assert cfgs["on_policy_rkl"]["divergence"] == "forward_kl"  # its off-policy steps
    assert cfgs["on_policy_rkl"]["on_policy_ratio"] == 0.5
    assert cfgs["online_jsd"]["teacher_mode"] == "online"
    assert cfgs["ce_only"]["alpha"] == 0.0
    rows = (tmp_path / "cmp/compare/on_policy_rkl/task/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["on_policy"] for r in rows] == [False, True]
    assert "KL(S||T) own" in capsys.readouterr().out


def test_unknown_method_is_one_line(tmp_path, capsys):
    rc = main(["eval", "--compare", "--methods", "ce_only,fancy_kl", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("kd: error: methods: unknown method 'fancy_kl'")


@pytest.mark.parametrize("given", ["", " ", ",,", " , ,"])
def test_an_empty_method_list_is_one_line_naming_the_methods(tmp_path, capsys, given):
    """`--methods ''` used to run the default comparison, `--methods ',,'` said "got []"."""
    out = tmp_path / "cmp"
    missing = str(tmp_path / "no-such-teacher")  # were it to train, it would stop here
    args = ["eval", "--compare", "--methods", given, "--teacher", missing, "--output", str(out)]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("kd: error: methods: name at least one method")
    assert "ce_only, kd, or one of fkl, rkl, jsd" in err[0] and "on_policy_" in err[0]
    assert not out.exists(), "nothing was written"
    assert main(["eval", "--methods", given]) == 2  # without --compare: refused as before
    assert capsys.readouterr().err.strip() == "kd: error: --methods: goes with --compare"
