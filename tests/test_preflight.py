"""Memory pre-flight and offline-first behaviour."""

from __future__ import annotations

import socket

import pytest

from kd_core.config import KDConfig
from kd_core.models.load import ModelInfo
from kd_core.models.memory import estimate_memory


def _info(params: int, vocab: int, layers: int, hidden: int) -> ModelInfo:
    return ModelInfo("x", "llama", params, "none", vocab, layers, hidden, params * 2)


def test_big_run_warns_with_what_to_change():
    t = _info(7_000_000_000, 152_064, 28, 3584)
    s = _info(3_000_000_000, 151_936, 36, 2048)
    cfg = KDConfig(batch_size=8, max_seq_length=2048, teacher_mode="online")
    est = estimate_memory(t, s, cfg, available=16 * 10**9)
    w = est.warning(cfg)
    assert w is not None and "\n" not in w
    assert "teacher_mode = 'offline'" in w and "batch_size" in w and "16.0 GB" in w
    assert est.student_pass_gb > est.teacher_pass_gb


def test_offline_mode_never_adds_the_teacher_to_the_student_pass():
    t = _info(7_000_000_000, 152_064, 28, 3584)
    s = _info(500_000_000, 151_936, 24, 896)
    off = estimate_memory(t, s, KDConfig(), available=10**12)
    on = estimate_memory(t, s, KDConfig(teacher_mode="online"), available=10**12)
    assert on.student_pass_gb - off.student_pass_gb >= 14.0
    assert off.warning(KDConfig()) is None


def test_a_big_teacher_suggests_quantizing_it():
    t = _info(70_000_000_000, 128_256, 80, 8192)
    s = _info(1_000_000_000, 128_256, 16, 2048)
    cfg = KDConfig(batch_size=1, max_seq_length=256)
    w = estimate_memory(t, s, cfg, available=32 * 10**9).warning(cfg)
    assert w and "quantized teacher" in w


@pytest.mark.slow
def test_a_whole_run_never_opens_a_network_connection(tiny_pair, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from kd_core.cli import main

    rc = main(
        [
            "distill",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.student),
            "--domain",
            "action",
            "--iters",
            "2",
            "--max-tokens",
            "8",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "o" / "action" / "adapters.safetensors").is_file()
