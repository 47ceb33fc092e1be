"""`kd serve-teacher` on loopback against the in-process teacher: the same targets, the same
seeded answers, the token rule before any work, one-line refusals, and a server that goes
away reported as TeacherUnavailable within the retry budget (no hang).

Float tolerance: targets travelling as float32 equal soft_targets' to 1e-6 (the server runs
the same soft_targets; a batch merged with other requests pads rows differently, which moves
the last bits); as float16 they equal soft_targets' values rounded to float16, as the cache
stores them."""

from __future__ import annotations

import http.client
import json
import queue
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from kd_core.config import KDConfig
from kd_core.remote import (
    FingerprintMismatch,
    RetryPolicy,
    TeacherRefused,
    TeacherUnavailable,
    TextItem,
    check_fingerprint,
    make_teacher,
)
from kd_core.remote.protocol import ScoreRequest
from kd_core.remote.server import ServeError, TeacherServer

FAST = RetryPolicy(retries=2, backoff_s=0.05, connect_timeout_s=2.0, read_timeout_s=60.0)
TOKEN = "s3cret-token-of-24-chars"
PROMPTS = ["How do lists work?", "Explain the for statement.", "What is a class?"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_pair):
    """The tiny teacher served twice (open, and with a token) and loaded in-process."""
    from kd_core.models.load import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_CACHE_DIR", str(tmp_path_factory.mktemp("kd-cache")))
        open_srv = TeacherServer(str(tiny_pair.teacher), port=0, batch_window_s=0.3).start()
        guarded = TeacherServer(str(tiny_pair.teacher), port=0, token=TOKEN).start()
        model, tok = load_model(tiny_pair.teacher)
        yield open_srv, guarded, model, tok
        open_srv.stop()
        guarded.stop()


def random_sequences(seed: int, n: int = 5) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    lens = rng.integers(6, 40, size=n)
    seqs = [rng.integers(4, 384, size=int(m)).astype(np.int32) for m in lens]
    return seqs, [int(rng.integers(1, m)) for m in lens]


def local_targets(model, seqs, plens, temperature=2.0, top_k=8):
    """As the in-process teacher pass calls soft_targets (its rows split over CPU streams)."""
    from kd_core.runtime.cpu_streams import stream_count
    from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets

    cfg = KDConfig(temperature=temperature, top_k=top_k)
    return soft_targets(model, seqs, plens, cfg, streams=stream_count(cfg.cpu_streams, FWD_CHUNK))


def test_score_equals_in_process_soft_targets(env) -> None:
    srv, _, model, _ = env
    seqs, plens = random_sequences(0)
    want_ids, want_lps, want_ch = local_targets(model, seqs, plens)
    exact = make_teacher(srv.url, "kd", logprob_dtype="float32", policy=FAST)
    ids, lps, chosen = exact.score(seqs, plens, 2.0, 8)
    for i in range(len(seqs)):
        assert ids[i].shape == (len(seqs[i]) - plens[i], 8) and ids[i].dtype == np.int32
        np.testing.assert_array_equal(ids[i], want_ids[i])
        np.testing.assert_allclose(lps[i], want_lps[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(chosen[i], want_ch[i], rtol=0, atol=1e-6)
    half = make_teacher(srv.url, "kd", policy=FAST)  # float16, as the cache keeps them
    t = half.targets(seqs, plens, 2.0, 8)
    for i in range(len(seqs)):
        np.testing.assert_array_equal(t.ids[i], want_ids[i])
        np.testing.assert_array_equal(
            t.logprobs[i], want_lps[i].astype(np.float16).astype(np.float32)
        )
        tail = np.log1p(-np.exp(want_lps[i].astype(np.float64)).sum(-1))
        np.testing.assert_allclose(t.tail[i], tail, rtol=1e-4)


def test_concurrent_trainers_are_batched_and_each_gets_its_own_targets(env) -> None:
    srv, _, model, _ = env
    before = (srv.worker.stats.batches, srv.worker.stats.score_requests)
    jobs = [random_sequences(10 + i, n=3) for i in range(4)]
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def trainer(i: int) -> None:
        client = make_teacher(srv.url, "kd", logprob_dtype="float32", policy=FAST)
        client.info()  # connected before the barrier: the four requests leave together
        barrier.wait()
        results[i] = client.score(*jobs[i], 2.0, 8)

    threads = [threading.Thread(target=trainer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    batches = srv.worker.stats.batches - before[0]
    assert srv.worker.stats.score_requests - before[1] == 4
    assert batches < 4  # requests of several trainers shared a soft_targets call
    for (seqs, plens), (ids, lps, chosen) in zip(jobs, results, strict=True):
        want_ids, want_lps, want_ch = local_targets(model, seqs, plens)
        for i in range(len(seqs)):
            np.testing.assert_array_equal(ids[i], want_ids[i])
            np.testing.assert_allclose(lps[i], want_lps[i], rtol=0, atol=1e-5)
            np.testing.assert_allclose(chosen[i], want_ch[i], rtol=0, atol=1e-5)


def test_generate_is_seeded_and_equals_the_teacher_pass(env) -> None:
    from kd_core.generate import generate_responses
    from kd_core.teacher.cache import response_texts

    srv, _, model, tok = env
    client = make_teacher(srv.url, "kd", logprob_dtype="float32", policy=FAST)
    settings = dict(
        max_tokens=8, teacher_temperature=0.7, seed=3, max_seq_length=64, temperature=2.0, top_k=8
    )
    a = client.generate(PROMPTS, **settings)
    b = client.generate(PROMPTS, **settings)
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
    other = client.generate(PROMPTS, **{**settings, "seed": 4})
    assert [s.tolist() for s in other.sequences] != [s.tolist() for s in a.sequences]
    cfg = KDConfig(**settings)
    seqs, plens = generate_responses(model, tok, PROMPTS, cfg)
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in seqs]
    assert a.prompt_lens == plens and a.prompt_cut == [False] * 3
    want_ids, want_lps, want_ch = local_targets(model, seqs, plens)
    for i in range(3):
        np.testing.assert_array_equal(a.targets.ids[i], want_ids[i])
        np.testing.assert_allclose(a.targets.logprobs[i], want_lps[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.targets.chosen[i], want_ch[i], rtol=0, atol=1e-6)
        assert a.responses[i].tolist() == seqs[i][plens[i] :].tolist()
    texts, ends = response_texts(tok, seqs, plens)
    assert a.texts == texts and [e.tolist() for e in a.char_ends] == [e.tolist() for e in ends]


def test_text_is_tokenized_by_the_teacher(env) -> None:
    from kd_core.generate import format_prompt

    srv, _, model, tok = env
    client = make_teacher(srv.url, "kd", logprob_dtype="float32", policy=FAST)
    items = [
        TextItem("What is a list?", " A list holds items.", chat=True, eos=True),
        TextItem("def f(x):", " return x", chat=False),
    ]
    seqs, plens, t = client.score_texts(items, 2.0, 8)
    eos = sorted(getattr(tok, "eos_token_ids", None) or [tok.eos_token_id])[0]
    first = format_prompt(tok, items[0].prompt)
    assert seqs[0].tolist() == first + tok.encode(items[0].response, add_special_tokens=False) + [
        eos
    ]
    assert plens[0] == len(first)
    assert seqs[1].tolist()[: plens[1]] == list(tok.encode(items[1].prompt))
    want_ids, want_lps, _ = local_targets(model, seqs, plens)
    for i in range(2):
        np.testing.assert_array_equal(t.ids[i], want_ids[i])
        np.testing.assert_allclose(t.logprobs[i], want_lps[i], rtol=0, atol=1e-6)


def test_bad_requests_are_refused_with_one_line_naming_the_field(env) -> None:
    srv, _, _, _ = env
    client = make_teacher(srv.url, "kd", policy=FAST)
    seqs, plens = random_sequences(1, n=2)
    seqs[1][0] = 384  # the tiny teacher's vocabulary is 0..383
    with pytest.raises(
        TeacherRefused, match=r"answered 400: sequences\[1\]: token ids must be from 0 to 383"
    ):
        client.score(seqs, plens, 2.0, 8)
    with pytest.raises(TeacherRefused, match="answered 400: temperature: 20.0 is out of range"):
        client.score(seqs[:1], plens[:1], 20.0, 8)
    body = ScoreRequest(2.0, 8, seqs[:1], [0]).to_json()
    status, reply = raw(srv, "POST", "/v1/score", body)
    assert status == 400 and reply["error"]["field"] == "prompt_lens"
    assert reply["error"]["message"] == "prompt_lens: expected a list of whole numbers >= 1"
    body = ScoreRequest(2.0, 8, seqs[:1], [len(seqs[0]) + 1]).to_json()
    status, reply = raw(srv, "POST", "/v1/score", body)
    assert status == 400 and reply["error"]["message"].startswith("prompt_lens[0]: ")


def test_fingerprint_is_checked(env, tiny_pair) -> None:
    from kd_core.remote.server import model_identity

    srv, _, _, _ = env
    client = make_teacher(srv.url, "kd", policy=FAST)
    weights, tokenizer = model_identity(tiny_pair.teacher)
    info = check_fingerprint(client, weights)
    assert info.tokenizer == tokenizer and info.vocab_size == 384 and info.max_top_k == 384
    with pytest.raises(
        FingerprintMismatch, match="made with fingerprint 0123abcd: serve that model"
    ):
        check_fingerprint(make_teacher(srv.url, "kd", policy=FAST), "0123abcd")
    client.expected_fingerprint = "0123abcd"  # as if the server had been restarted with another
    with pytest.raises(FingerprintMismatch, match="now serves model"):
        client.score(*random_sequences(2, n=1), 2.0, 8)


def raw(srv: TeacherServer, method: str, path: str, body=None, token: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data)
    except json.JSONDecodeError:
        return resp.status, data


def test_token_is_checked_before_any_work_on_every_route(env) -> None:
    _, srv, _, _ = env
    score = ScoreRequest(2.0, 8, *random_sequences(3, n=2)).to_json()
    routes = [
        ("GET", "/v1/info", None),
        ("POST", "/v1/score", score),
        ("POST", "/v1/generate", {"prompts": PROMPTS, "max_tokens": 4}),
        ("GET", "/v1/tokenizer", None),
        ("GET", "/nowhere", None),
        ("POST", "/v1/info", {}),
    ]
    for method, path, body in routes:
        assert raw(srv, method, path, body)[0] == 401, path
        for wrong in ("x" * 24, TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
            status, reply = raw(srv, method, path, body, token=wrong)
            assert status == 403 and reply["error"]["message"] == "token: wrong token", path
    stats = srv.worker.stats
    assert (stats.forwards, stats.generations, stats.score_requests) == (0, 0, 0)
    assert raw(srv, "POST", "/v1/score", score, token=TOKEN)[0] == 200
    assert stats.forwards == 1
    with pytest.raises(TeacherRefused, match="answered 401: token: this teacher needs"):
        make_teacher(srv.url, "kd", policy=FAST).info()
    assert make_teacher(srv.url, "kd", token=TOKEN, policy=FAST).info().vocab_size == 384


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "0.0.0.0"}, "--token: required to serve on 0.0.0.0 (a non-loopback address)"),
        ({"host": "0.0.0.0", "token": "short"}, "--token: 5 characters is too short to be safe"),
        ({"token": " " * 20}, "--token: empty or blank"),
        ({"token": "sixteen chars ok"}, "--token: no whitespace or control characters"),
        ({"port": 70000}, "--port: expected a whole number from 0 to 65535, got 70000"),
    ],
)
def test_refused_at_start_before_loading(tiny_pair, kwargs, message) -> None:
    with pytest.raises(ServeError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        TeacherServer(str(tiny_pair.teacher), **kwargs)


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kd_core", "serve-teacher", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--port", "http"],
            "kd serve-teacher: --port: expected a whole number from 0 to 65535, got 'http'",
        ),
        (
            ["--host", "no-such-host.invalid"],
            "kd serve-teacher: --host: cannot resolve 'no-such-host.invalid'",
        ),
        (
            ["--host", "0.0.0.0", "--token", "too-short"],
            "kd serve-teacher: --token: 9 characters is too short to be safe",
        ),
        (["--port", "{busy}"], "kd serve-teacher: --port: 127.0.0.1:{busy} is in use"),
    ],
)
def test_cli_refusals_are_one_line_exit_2(tiny_pair, args, message) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    try:
        proc = cli("--model", str(tiny_pair.teacher), *[a.replace("{busy}", port) for a in args])
        out, err = proc.communicate(timeout=120)
    finally:
        busy.close()
    assert proc.returncode == 2
    assert err.startswith(message.replace("{busy}", port)) and err.count("\n") == 1


def test_killed_server_is_unavailable_within_the_retry_budget(tiny_pair) -> None:
    """The CLI prints the bound URL (port 0: the real port); killed mid-run, the next call
    ends in TeacherUnavailable after the policy's tries, not in a hang."""
    proc = cli("--model", str(tiny_pair.teacher), "--port", "0")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=120)
        url = first.rsplit(" on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        client = make_teacher(url, "kd", policy=FAST)
        seqs, plens = random_sequences(4, n=2)
        assert len(client.score(seqs, plens, 2.0, 8)[0]) == 2
        proc.kill()
        proc.wait(timeout=30)
        with pytest.raises(
            TeacherUnavailable, match=r"POST /v1/score failed \(.*\) after 3 tries$"
        ):
            client.score(seqs, plens, 2.0, 8)
    finally:
        proc.kill()
        proc.wait(timeout=30)
