"""Data-parallel distillation: two ranks on loopback (mlx.launch, ring backend)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

LR, ITERS = 0.01, 4


def _args(tiny_pair, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kd_core",
        "--teacher",
        str(tiny_pair.teacher),
        "--student",
        str(tiny_pair.student),
        "--domain",
        "task",
        "--iters",
        str(ITERS),
        "--max-tokens",
        "12",
        "--batch-size",
        "4",
        "--max-seq-length",
        "64",
        "--learning-rate",
        str(LR),
        # The drift tolerance below was measured at this scale (KDConfig's default is the
        # original API's 1.0, at which the same run drifts 2.8e-4 on one element).
        "--lora-scale",
        "2.0",
        "--steps-per-save",
        "2",
        "--output",
        str(out),
        *extra,
    ]


def test_two_ranks_match_one_process(tiny_pair, tmp_path):
    env = {**os.environ, "KD_VERIFY_SYNC": "1"}  # every step: identical weights on all ranks
    two = subprocess.run(
        _args(tiny_pair, tmp_path / "two", "--distributed", "2", "--events", "jsonl"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    events = [json.loads(x) for x in two.stdout.splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4]  # rank 0 only
    assert events[-1]["kind"] == "run_finished"
    # The teacher pass was shared out; a single-process rerun reuses the complete cache.
    one = subprocess.run(
        _args(tiny_pair, tmp_path / "one", "--events", "jsonl"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    cache = [json.loads(x) for x in one.stdout.splitlines() if '"kind":"cache"' in x][0]
    assert cache["hit"] and cache["examples"] == 60

    steps2 = [e["combined"] for e in events if e["kind"] == "step"]
    steps1 = [json.loads(x)["combined"] for x in one.stdout.splitlines() if '"kind":"step"' in x]
    assert steps2 == pytest.approx(steps1, rel=1e-4)
    a = mx.load(str(tmp_path / "two" / "task" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "one" / "task" / "adapters.safetensors"))
    # Two ranks sum the same gradient in another order (float32, ~1e-7 relative); Adam
    # normalises each element, so the drift is a small fraction of the per-step movement
    # (at most about 3*lr): allow 0.5% of the whole possible movement, lr * iters.
    tol = 0.005 * LR * ITERS
    for k in a:
        assert np.abs(np.array(a[k]) - np.array(b[k])).max() <= tol, k
    # One writer: checkpoints exactly once, whole.
    assert sorted(p.name for p in (tmp_path / "two" / "task").glob("checkpoint_*")) == [
        "checkpoint_2",
        "checkpoint_4",
    ]


def _rank_pids(parent: int, rank: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"MLX_RANK={rank}".encode() in environ
            and b"KD_TEST_RUN=" + str(parent).encode() in environ
        ):
            pids.append(int(d.name))
    return pids


def test_a_dead_rank_stops_the_others_with_an_error(tiny_pair, tmp_path):
    marker = str(os.getpid())
    env = {**os.environ, "KD_TEST_RUN": marker}
    args = _args(tiny_pair, tmp_path / "dead", "--distributed", "2", "--events", "jsonl")
    args[args.index("--iters") + 1] = "400"
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"kind":"step"' in line:
                break
        pids = _rank_pids(int(marker), "1")
        assert pids, "rank 1 not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:  # never leave a run behind, whatever happened
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() - start < 60  # stopped, did not hang
    assert proc.returncode != 0
    assert "exited with code" in err or "peer" in err
