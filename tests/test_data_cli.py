"""`kd distill --data` (issue 25): chat, completions, text and prompts-only files each train end
to end through the CLI, the format is named in the log, `data = "..."` in kd.toml is the same,
and a bad row is one line naming the file and the line, with nothing trained or written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST = ["--iters", "2", "--batch-size", "2", "--max-seq-length", "64", "--max-tokens", "8"]
FAST += ["--steps-per-save", "100", "--learning-rate", "0.01", "--top-k", "8"]

ROWS = {
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": f"Count to {i}"},
                {"role": "assistant", "content": " ".join(str(j) for j in range(i + 1))},
            ],
            "tools": [{"type": "function", "function": {"name": "count"}}],
        }
        for i in range(8)
    ],
    "completions": [{"prompt": f"Double {i}", "completion": f"{2 * i}."} for i in range(8)],
    "text": [{"text": f"The number {i} comes before {i + 1}."} for i in range(8)],
    "prompts": [{"prompt": f"Say {i} twice"} for i in range(8)],
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kd(tiny_pair, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kd_core", "--teacher", str(tiny_pair.teacher)]
    cmd += ["--student", str(tiny_pair.student), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("fmt", ["chat", "completions", "text", "prompts"])
def test_each_format_trains_through_the_cli(tiny_pair, tmp_path, fmt):
    data = write_rows(tmp_path / fmt / "train.jsonl", ROWS[fmt])
    write_rows(tmp_path / fmt / "valid.jsonl", ROWS[fmt][:2])
    out = tmp_path / "out"
    proc = kd(tiny_pair, tmp_path, "--data", str(data.parent), "--output", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    assert f"{data}: {fmt}, 8 rows" in proc.stdout
    answers = "generate" if fmt == "prompts" else "given"
    assert f"teacher answers: {answers}" in proc.stdout
    summary = json.loads((out / "kd_summary.json").read_text())
    block = summary["domains"][fmt]["data"]
    assert block["format"] == fmt and block["rows"] == 8 and block["examples"] == 8
    assert block["given_or_generated"] == answers
    assert block["held_out"] == {
        "from": "valid", "path": str(tmp_path / fmt / "valid.jsonl"), "rows": 2, "lines": [1, 2]
    }  # fmt: skip
    assert (out / fmt / "adapters.safetensors").is_file()


def test_data_key_in_kd_toml_with_template_tables(tiny_pair, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS["completions"] * 3)
    (tmp_path / "kd.toml").write_text(
        f'data = "{data}"\nteacher_answers = "both"\n\n'
        "[student_chat_template_kwargs]\nenable_thinking = false\n"
    )
    out = tmp_path / "out"
    proc = kd(tiny_pair, tmp_path, "--output", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    block = json.loads((out / "kd_summary.json").read_text())["domains"]["pairs"]["data"]
    assert block["given_or_generated"] == "both"
    # 24 rows, 5% seeded held out: duplicates are held out together (8 distinct rows x 3).
    held = block["held_out"]
    assert held["from"] == "seeded" and held["rows"] == 3 and len(held["lines"]) == 3
    assert block["examples"] == 2 * (24 - 3)  # the given answers and the teacher's own
    recorded = (out / ".kd-run" / "kd.toml").read_text()
    assert f'data = "{data}"' in recorded and "[student_chat_template_kwargs]" in recorded


def test_bad_row_is_one_line_naming_file_and_line_and_nothing_is_written(tiny_pair, tmp_path):
    rows = [json.dumps(r) for r in ROWS["completions"]]
    rows[4] = json.dumps({"prompt": "Double 4", "answer": "8."})
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = kd(tiny_pair, tmp_path, "--data", str(data), "--output", str(out), *FAST)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{data} line 5" in err[0], proc.stderr
    assert "a prompts row in a completions file" in err[0]
    assert not out.exists()


def test_eval_data_scores_the_held_out_given_answers(tiny_pair, tmp_path):
    """`kd eval --data` scores valid.jsonl's given answers: the teacher against itself is at
    KL 0 and agrees on every top-1; a student is not."""
    folder = tmp_path / "chat"
    write_rows(folder / "train.jsonl", ROWS["chat"])
    write_rows(folder / "valid.jsonl", ROWS["chat"][:3])
    report = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "kd_core", "eval", "--data", str(folder)]
    cmd += ["--teacher", str(tiny_pair.teacher), "--max-seq-length", "64", "--json", str(report)]
    same = subprocess.run(
        [*cmd, "--student", str(tiny_pair.teacher)], capture_output=True, text=True, cwd=tmp_path
    )
    assert same.returncode == 0, same.stderr
    assert "held-out rows 3 (valid.jsonl)" in same.stdout
    base = json.loads(report.read_text())["base"]
    assert base["rows"] == 3 and base["kl"] < 2e-3 and base["top1_agreement"] == 1.0
    other = subprocess.run(
        [*cmd, "--student", str(tiny_pair.student)], capture_output=True, text=True, cwd=tmp_path
    )
    assert other.returncode == 0, other.stderr
    figures = json.loads(report.read_text())["base"]
    assert figures["kl"] > 0.05 and 0 < figures["bits_per_char"] < 20


def test_hf_dataset_in_the_local_cache_trains_as_a_data_domain(tiny_pair, tmp_path, monkeypatch):
    """data = "hf:NAME[:split]": the same detection and the same run, offline (a stand-in for
    the `datasets` library holds the split, as its local cache would)."""
    from test_data_files_splits import FakeDatasets

    from kd_core.commands.run_domains import spec_domains
    from kd_core.config import KDConfig, RunSpec
    from kd_core.distiller import TrueKnowledgeDistiller

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets({("org/set", "train"): ROWS["chat"]}))
    out = tmp_path / "out"
    cfg = KDConfig(num_iters=2, batch_size=2, max_seq_length=64, top_k=8, output=str(out))
    spec = RunSpec(str(tiny_pair.teacher), str(tiny_pair.student), config=cfg, data="hf:org/set")
    domains = spec_domains(spec)
    assert list(domains) == ["set-train"]
    TrueKnowledgeDistiller(spec.teacher, spec.student, cfg).run(domains)
    block = json.loads((out / "kd_summary.json").read_text())["domains"]["set-train"]["data"]
    assert block["path"] == "hf:org/set" and block["format"] == "chat" and block["rows"] == 8


def test_template_table_that_sets_what_rendering_sets_is_refused_before_the_run(
    tiny_pair, tmp_path
):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS["completions"])
    (tmp_path / "kd.toml").write_text(
        f'data = "{data}"\n\n[teacher_chat_template_kwargs]\nadd_generation_prompt = true\n'
    )
    out = tmp_path / "out"
    proc = kd(tiny_pair, tmp_path, "--output", str(out), *FAST)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err == ["kd: error: teacher_chat_template_kwargs cannot set add_generation_prompt"]
    assert not out.exists()


def test_compare_methods_on_data(tiny_pair, tmp_path):
    """`kd eval --compare --methods ... --data`: each method trained on the data's rows and
    scored on its held-out rows, with the base student."""
    folder = tmp_path / "pairs"
    write_rows(folder / "train.jsonl", ROWS["completions"])
    write_rows(folder / "valid.jsonl", ROWS["completions"][:2])
    report = tmp_path / "methods.json"
    cmd = [sys.executable, "-m", "kd_core", "eval", "--compare", "--methods", "ce_only,jsd"]
    cmd += ["--data", str(folder), "--teacher", str(tiny_pair.teacher)]
    cmd += ["--student", str(tiny_pair.student), "--output", str(tmp_path / "out")]
    cmd += [*FAST, "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(report.read_text())
    assert set(res) == {"base", "ce_only", "jsd", "summary"}
    assert res["summary"]["methods"]["jsd"]["divergence"] == "jsd"
    assert res["ce_only"]["rows"] == 2 and res["jsd"]["kl"] != res["ce_only"]["kl"]


def test_eval_data_scores_a_single_file_whole(tiny_pair, tmp_path):
    """`kd eval --data FILE` (no training) scores every row of the file it is handed; the
    seeded 5% is what a run holds out of its training file, not what evaluation scores."""
    path = tmp_path / "test.jsonl"
    write_rows(path, ROWS["completions"])
    report = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "kd_core", "eval", "--data", str(path), "--json", str(report)]
    cmd += ["--teacher", str(tiny_pair.teacher), "--student", str(tiny_pair.student)]
    proc = subprocess.run([*cmd, "--max-seq-length", "64"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    n = len(ROWS["completions"])
    assert f"held-out rows {n} (every row of the file)" in proc.stdout
    assert json.loads(report.read_text())["base"]["rows"] == n
