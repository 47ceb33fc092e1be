"""kd's mlx_lm client against a real `mlx_lm.server` serving the tiny teacher on loopback.

mlx_lm.server returns the top log-probs (at most 11, T = 1) of the tokens it generates: the
client's targets must equal the local teacher's top-11 at T = 1 on those very tokens.
Tolerance 1e-4 absolute on log-probs: the server decodes token by token with a KV cache,
the local teacher runs one teacher-forced forward (measured: ~1.5e-6 apart). Ids are
compared through the local distribution (each returned id's local log-prob), so a near tie
at the 11th place cannot fail the test for the wrong reason."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from kd_core.remote import RetryPolicy, TeacherUnavailable, TeacherUnsupported, make_teacher

TOL = 1e-4
PROMPTS = ["How do lists work?", "What is a class?"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def mlx_server(tiny_pair, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("mlx-lm") / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            str(tiny_pair.teacher),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    probe = make_teacher(url, "mlx_lm", policy=RetryPolicy(retries=0, connect_timeout_s=2.0))
    deadline = time.monotonic() + 120
    while True:  # the server loads the model before it listens
        try:
            probe.http.request("GET", "/health")
            break
        except TeacherUnavailable:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlx_lm.server did not start (see {log.name})")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_top11_of_generated_tokens_equals_the_local_teacher(tiny_pair, mlx_server) -> None:
    from kd_core.examples.batch import forward_inputs
    from kd_core.losses.core import log_softmax
    from kd_core.models.load import load_model

    model, tok = load_model(tiny_pair.teacher)
    client = make_teacher(mlx_server, "mlx_lm")
    gen = client.generate(PROMPTS, max_tokens=12, teacher_temperature=1.0, seed=7, tokenizer=tok)
    assert gen.fingerprint.startswith("mlx_lm:") and len(gen.sequences) == 2
    again = client.generate(PROMPTS, max_tokens=12, teacher_temperature=1.0, seed=7)
    assert [r.tolist() for r in again.responses] == [r.tolist() for r in gen.responses]
    for i, (seq, plen) in enumerate(zip(gen.sequences, gen.prompt_lens, strict=True)):
        assert seq[plen:].tolist() == gen.responses[i].tolist() and len(gen.responses[i]) > 0
        full = np.array(log_softmax(model(mx.array(forward_inputs([seq]))), 1.0))[0]
        rows = full[plen - 1 : len(seq) - 1]  # position j predicts token j + 1
        ids, lps = gen.targets.ids[i], gen.targets.logprobs[i]
        assert ids.shape == (len(seq) - plen, 11)
        np.testing.assert_allclose(np.take_along_axis(rows, ids, 1), lps, rtol=0, atol=TOL)
        np.testing.assert_allclose(-np.sort(-rows, axis=1)[:, :11], lps, rtol=0, atol=TOL)
        chosen = rows[np.arange(len(rows)), seq[plen:]]
        np.testing.assert_allclose(gen.targets.chosen[i], chosen, rtol=0, atol=TOL)


def test_modes_it_cannot_serve_are_refused(mlx_server) -> None:
    client = make_teacher(mlx_server, "mlx_lm")
    seq = np.array([2, 10, 11, 12], np.int32)
    with pytest.raises(TeacherUnsupported, match="cannot score a given text: mlx_lm.server"):
        client.score([seq], [2], 1.0, 11)
    with pytest.raises(TeacherUnsupported, match="^temperature: 2 cannot be served"):
        client.generate(PROMPTS, temperature=2.0)


def test_offline_pass_through_mlx_lm_server_equals_the_local_top11(tiny_pair, mlx_server, tmp_path):
    """kd's offline pass with teacher_api = "mlx_lm": the cache's targets on the server's own
    answers are the local teacher's top-11 at T = 1 (within TOL, then float16 as cached)."""
    from kd_core.config import KDConfig
    from kd_core.distiller import TrueKnowledgeDistiller
    from kd_core.events import CacheUsed
    from kd_core.examples.batch import forward_inputs
    from kd_core.losses.core import log_softmax
    from kd_core.models.load import load_model
    from kd_core.teacher.cache import load_outputs

    config = KDConfig(
        teacher_api="mlx_lm", temperature=1.0, top_k=11, num_iters=1, max_tokens=6,
        batch_size=2, max_seq_length=64, output=str(tmp_path / "out"),
    )  # fmt: skip
    events: list = []
    TrueKnowledgeDistiller(
        mlx_server, str(tiny_pair.student), config, on_event=events.append,
        cache_dir=tmp_path / "c", teacher_tokenizer=str(tiny_pair.teacher),
    ).distill_domain("task", PROMPTS)  # fmt: skip
    path = next(e.path for e in events if isinstance(e, CacheUsed))
    out = load_outputs(Path(path), {}, True)
    model, _ = load_model(tiny_pair.teacher)
    for seq, plen, ids, lps in zip(
        out.sequences, out.prompt_lens, out.topk_ids, out.topk_logprobs, strict=True
    ):
        rows = np.array(log_softmax(model(mx.array(forward_inputs([seq]))), 1.0))[0]
        rows = rows[plen - 1 : len(seq) - 1]
        want = -np.sort(-rows, axis=1)[:, :11]
        fp16 = np.abs(want) * 2.0**-11  # the cache's float16 rounding
        assert np.all(np.abs(lps - want) <= TOL + fp16)
        assert np.all(np.abs(np.take_along_axis(rows, ids, 1) - lps) <= TOL + fp16)
