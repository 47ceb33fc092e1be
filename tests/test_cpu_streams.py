"""A step split over parallel CPU streams trains exactly what one stream trains."""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest

from kd_core.config import ConfigError, KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import Step
from kd_core.runtime import blas
from kd_core.runtime.cpu_streams import row_slices, stream_count


@pytest.mark.parametrize("rows,parts", [(4, 2), (5, 2), (7, 3), (1, 3), (3, 1), (2, 8)])
def test_row_slices_cover_every_row_once_and_balance(rows, parts):
    slices = row_slices(rows, parts)
    covered = [i for s in slices for i in range(rows)[s]]
    assert covered == list(range(rows))
    sizes = [s.stop - s.start for s in slices]
    assert len(slices) == min(rows, parts) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_stream_count_rules():
    assert stream_count(3, rows=8) == 3
    assert stream_count(3, rows=2) == 2  # never more streams than rows
    assert stream_count(0, rows=1) == 1
    assert stream_count(0, rows=8, distributed=True) == 1  # ranks already split the batch
    expected = min(os.cpu_count() or 1, 8) if mx.default_device().type == mx.cpu else 1
    assert stream_count(0, rows=8) == expected


def test_cpu_streams_is_validated():
    with pytest.raises(ConfigError, match="cpu_streams"):
        KDConfig(cpu_streams=-1)


def _run(pair, tmp_path, name: str, **overrides) -> tuple[list[float], dict[str, np.ndarray]]:
    events: list = []
    cfg = KDConfig(
        num_iters=3,
        max_tokens=12,
        batch_size=4,
        max_seq_length=64,
        output=str(tmp_path / name),
        **overrides,
    )
    TrueKnowledgeDistiller(
        str(pair.teacher), str(pair.student), cfg, on_event=events.append
    ).distill_domain("task")
    weights = mx.load(str(tmp_path / name / "task" / "adapters.safetensors"))
    return [e.combined for e in events if isinstance(e, Step)], {
        k: np.array(v) for k, v in weights.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        {"teacher_mode": "offline", "loss_chunk": -1, "grad_accumulation": 2},
        {"teacher_mode": "offline", "loss_chunk": 16},  # the chunked two-phase loss
        {"teacher_mode": "online"},
    ],
    ids=["fused+accumulation", "chunked", "online"],
)
def test_two_streams_train_what_one_stream_trains(tiny_pair, tmp_path, mode):
    threads_before = blas.blas_threads()
    one_loss, one_w = _run(tiny_pair, tmp_path, "one", cpu_streams=1, **mode)
    two_loss, two_w = _run(tiny_pair, tmp_path, "two", cpu_streams=2, **mode)
    assert len(one_loss) == 3
    assert two_loss == pytest.approx(one_loss, rel=1e-4)
    assert one_w.keys() == two_w.keys()
    for k in one_w:
        scale = max(1e-3, float(np.abs(one_w[k]).max()))
        assert np.abs(one_w[k] - two_w[k]).max() <= 1e-3 * scale, k
    # The trainer gives BLAS its threads back (generation and eval run on one stream).
    assert blas.blas_threads() == threads_before


def test_soft_targets_on_streams_equal_one_stream(tiny_pair):
    from mlx_lm import load

    from kd_core.teacher.teacher_pass import soft_targets

    model, _ = load(str(tiny_pair.teacher))
    rng = np.random.default_rng(0)
    # Uneven lengths, more sequences than one forward takes: shards pad on their own.
    seqs = [
        rng.integers(1, 300, size=int(rng.integers(12, 40))).astype(np.int32) for _ in range(11)
    ]
    plens = [int(rng.integers(3, 8)) for _ in seqs]
    cfg = KDConfig(top_k=8)
    ids1, lps1, ch1 = soft_targets(model, seqs, plens, cfg, streams=1)
    ids3, lps3, ch3 = soft_targets(model, seqs, plens, cfg, streams=3)
    for s, p, a, b, c, d, e, f in zip(seqs, plens, ids1, ids3, lps1, lps3, ch1, ch3, strict=True):
        assert a.shape == (len(s) - p, 8) and np.array_equal(a, b)
        assert np.allclose(c, d, atol=1e-5)
        assert e.shape == (len(s) - p,) and np.allclose(e, f, atol=1e-5) and np.all(e <= 0)
