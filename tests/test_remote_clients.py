"""Clients of vLLM, SGLang and mlx_lm.server against their recorded reply shapes, and the
transport every client shares (timeouts, bounded retries, one-line errors).

A stub HTTP server on 127.0.0.1 replays the JSON fixtures of tests/remote_fixtures (written
from each project's source; see the README there) and records what the client sent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from kd_core.remote import (
    RetryPolicy,
    TeacherRefused,
    TeacherUnavailable,
    TeacherUnsupported,
    make_teacher,
)
from kd_core.remote.foreign import parse_mlx_lm_pair

FIXTURES = Path(__file__).with_name("remote_fixtures")
FAST = RetryPolicy(retries=2, backoff_s=0.01, connect_timeout_s=2.0, read_timeout_s=10.0)

# The two sequences both scoring fixtures hold, and the targets they must give (top-3).
SEQS = [np.array([5, 17, 42, 9, 311, 2], np.int32), np.array([1, 8, 2], np.int32)]
PLENS = [4, 1]
WANT_IDS = [[[279, 311, 264], [3554, 1879, 1273]], [[8, 3, 4], [9, 6, 2]]]
WANT_LPS = [[[-0.7, -1.0, -2.6], [-0.3, -2.2, -2.9]], [[-0.25, -2.0, -3.5], [-0.5, -1.5, -9999.0]]]
WANT_CHOSEN = [[-1.0, -12.5], [-0.25, -9999.0]]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Stub:
    """Routes (method, path) -> replies (status, body), played in order, the last repeated."""

    def __init__(self, routes: dict[tuple[str, str], list[tuple[int, bytes]]]) -> None:
        self.routes = {k: list(v) for k, v in routes.items()}
        self.seen: list[tuple[str, str, dict | None, str | None]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                stub.seen.append((method, self.path, body, self.headers.get("Authorization")))
                replies = stub.routes.get((method, self.path), [(404, b'{"error": "no route"}')])
                status, data = replies.pop(0) if len(replies) > 1 else replies[0]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs: list[Stub] = []

    def make(routes: dict[tuple[str, str], list[tuple[int, bytes]]]) -> Stub:
        stubs.append(Stub(routes))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


def assert_fixture_targets(ids: list, lps: list, chosen: list) -> None:
    for i in range(2):
        assert ids[i].dtype == np.int32 and lps[i].dtype == np.float32
        assert chosen[i].dtype == np.float32 and ids[i].shape == (2, 3)
        np.testing.assert_array_equal(ids[i], WANT_IDS[i])
        np.testing.assert_allclose(lps[i], WANT_LPS[i], rtol=1e-6)
        np.testing.assert_allclose(chosen[i], WANT_CHOSEN[i], rtol=1e-6)


def test_vllm_reads_prompt_logprobs_in_prompt_order(stub_factory) -> None:
    """Choices come back out of order, the prompt's own token adds a (k+1)th entry when it is
    outside the top-k, -inf comes as -9999: the targets are still soft_targets-shaped."""
    stub = stub_factory(
        {
            ("POST", "/v1/completions"): [(200, fixture("vllm_completions.json"))],
            ("GET", "/v1/models"): [(200, fixture("vllm_models.json"))],
        }
    )
    t = make_teacher(stub.url, "vllm", token="t" * 20, policy=FAST)
    assert_fixture_targets(*t.score(SEQS, PLENS, 1.0, 3))
    _, path, body, auth = stub.seen[-1]
    assert path == "/v1/completions" and auth == "Bearer " + "t" * 20
    assert body["prompt"] == [s.tolist() for s in SEQS]  # token ids, not text
    assert body["prompt_logprobs"] == 3 and body["max_tokens"] == 1
    assert body["model"] == "Qwen/Qwen2.5-0.5B-Instruct"  # from /v1/models
    info = t.info()
    assert info.max_top_k == 20 and info.fingerprint.startswith("vllm:")
    tail = t.targets(SEQS, PLENS, 1.0, 3).tail[0]
    np.testing.assert_allclose(tail, np.log(1 - np.exp(np.array(WANT_LPS[0])).sum(-1)), rtol=1e-5)


def test_vllm_refuses_what_it_cannot_serve(stub_factory) -> None:
    stub = stub_factory({})
    t = make_teacher(stub.url, "vllm", policy=FAST, model="m")
    with pytest.raises(TeacherUnsupported, match=r"^temperature: 2 cannot be served .*T = 1"):
        t.score(SEQS, PLENS, 2.0, 3)
    with pytest.raises(TeacherUnsupported, match=r"^top_k: 32 is more than .*at most 20"):
        t.score(SEQS, PLENS, 1.0, 32)
    assert stub.seen == []  # refused before any request


@pytest.mark.parametrize("name", ["vllm_error.json", "vllm_error_legacy.json"])
def test_vllm_error_replies_are_one_line(stub_factory, name: str) -> None:
    stub = stub_factory({("POST", "/v1/completions"): [(400, fixture(name))]})
    t = make_teacher(stub.url, "vllm", policy=FAST, model="m", max_logprobs=64)
    with pytest.raises(TeacherRefused) as e:
        t.score(SEQS, PLENS, 1.0, 32)
    message = json.loads(fixture(name)).get("error", json.loads(fixture(name)))["message"]
    assert str(e.value).endswith("answered 400: " + message) and "\n" not in str(e.value)
    assert e.value.status == 400 and len(stub.seen) == 1  # a refusal is not retried


def test_vllm_reply_without_prompt_logprobs_is_refused(stub_factory) -> None:
    reply = json.loads(fixture("vllm_completions.json"))
    for c in reply["choices"]:
        c["prompt_logprobs"] = None
    stub = stub_factory({("POST", "/v1/completions"): [(200, json.dumps(reply).encode())]})
    t = make_teacher(stub.url, "vllm", policy=FAST, model="m")
    with pytest.raises(TeacherRefused, match="prompt_logprobs has no entries"):
        t.score(SEQS, PLENS, 1.0, 3)


def test_sglang_reads_input_top_logprobs(stub_factory) -> None:
    stub = stub_factory(
        {
            ("POST", "/generate"): [(200, fixture("sglang_generate.json"))],
            ("GET", "/get_model_info"): [(200, fixture("sglang_model_info.json"))],
        }
    )
    t = make_teacher(stub.url, "sglang", policy=FAST)
    assert_fixture_targets(*t.score(SEQS, PLENS, 1.0, 3))
    body = stub.seen[-1][2]
    assert body["input_ids"] == [s.tolist() for s in SEQS] and body["top_logprobs_num"] == 3
    assert body["return_logprob"] is True and body["logprob_start_len"] == 0
    assert t.info().model == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(TeacherUnsupported, match="^temperature: 0.5 cannot be served"):
        t.score(SEQS, PLENS, 0.5, 3)


def test_sglang_input_that_does_not_match_is_refused(stub_factory) -> None:
    stub = stub_factory({("POST", "/generate"): [(200, fixture("sglang_generate.json"))]})
    t = make_teacher(stub.url, "sglang", policy=FAST)
    other = [SEQS[0].copy(), SEQS[1]]
    other[0][5] = 7  # the reply scored token 2 there
    with pytest.raises(TeacherRefused, match="at token 5 do not match the input"):
        t.score(other, PLENS, 1.0, 3)


def test_sglang_error_reply_is_one_line(stub_factory) -> None:
    stub = stub_factory({("POST", "/generate"): [(400, fixture("sglang_error.json"))]})
    t = make_teacher(stub.url, "sglang", policy=FAST)
    with pytest.raises(TeacherRefused, match=r"answered 400: The input \(40000 tokens\) is longer"):
        t.score(SEQS, PLENS, 1.0, 3)


def test_mlx_lm_error_reply_and_refusals(stub_factory) -> None:
    stub = stub_factory(
        {
            ("POST", "/v1/chat/completions"): [(400, fixture("mlx_lm_error.json"))],
            ("GET", "/v1/models"): [(200, b'{"object": "list", "data": []}')],
            ("GET", "/health"): [(200, b'{"status": "ok"}')],
        }
    )
    t = make_teacher(stub.url, "mlx_lm", policy=FAST)
    with pytest.raises(TeacherRefused, match="answered 400: top_logprobs must be at most 11$"):
        t.generate(["hi"], top_k=5)
    with pytest.raises(TeacherUnsupported, match="cannot score a given text.*offline pass only"):
        t.score(SEQS, PLENS, 1.0, 5)
    with pytest.raises(TeacherUnsupported, match="^top_k: 12 is more than .*at most 11"):
        t.generate(["hi"], top_k=12)
    with pytest.raises(TeacherUnsupported, match="^temperature: 2 cannot be served"):
        t.generate(["hi"], temperature=2.0)


def test_mlx_lm_pair_that_disagrees_is_refused() -> None:
    """The two seeded passes must give the same answer; a server that ignores the seed is
    caught, not trained on."""
    chosen = {
        "choices": [{"logprobs": {"content": [{"id": 5, "logprob": -0.5}]}}],
        "usage": {"prompt_tokens": 3},
    }
    top = {
        "choices": [
            {
                "logprobs": {
                    "content": [
                        {
                            "id": 5,
                            "token": "a",
                            "logprob": -0.9,
                            "top_logprobs": [
                                {"id": 5, "token": "a", "logprob": -0.9},
                                {"id": 6, "token": "b", "logprob": -1.0},
                            ],
                        }
                    ]
                }
            }
        ],
        "usage": {"prompt_tokens": 3},
    }
    with pytest.raises(TeacherRefused, match="did not honour the seed"):
        parse_mlx_lm_pair(chosen, top, 2)
    top["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = -0.5
    toks, ids, lps, ch, n = parse_mlx_lm_pair(chosen, top, 2)
    assert toks.tolist() == [5] and ids.tolist() == [[5, 6]] and ch.tolist() == [-0.5] and n == 3


def test_retries_then_success_and_then_unavailable(stub_factory) -> None:
    """503 is a server not ready yet: retried with backoff; after the tries run out the
    message names the host, what failed and how many tries."""
    ok = (200, fixture("sglang_generate.json"))
    busy = (503, b'{"error": {"message": "loading"}}')
    stub = stub_factory({("POST", "/generate"): [busy, busy, ok]})
    t = make_teacher(stub.url, "sglang", policy=FAST)
    assert_fixture_targets(*t.score(SEQS, PLENS, 1.0, 3))
    assert len(stub.seen) == 3
    stub.routes[("POST", "/generate")] = [busy]
    with pytest.raises(TeacherUnavailable) as e:
        t.score(SEQS, PLENS, 1.0, 3)
    host = stub.url.removeprefix("http://")
    assert str(e.value) == (
        f"sglang teacher at {host}: POST /generate failed (HTTP 503: loading) after 3 tries"
    )


def test_nobody_listening_is_unavailable_after_the_tries() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = make_teacher(f"http://127.0.0.1:{port}", "kd", policy=FAST)
    with pytest.raises(
        TeacherUnavailable, match=r"GET /v1/info failed \(connection refused\) after 3 tries$"
    ):
        t.info()


def test_a_server_that_never_answers_times_out() -> None:
    """A server that accepts and then says nothing: the read timeout ends each try."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        policy = RetryPolicy(retries=1, backoff_s=0.01, connect_timeout_s=2.0, read_timeout_s=0.2)
        t = make_teacher(f"http://127.0.0.1:{s.getsockname()[1]}", "kd", policy=policy)
        with pytest.raises(TeacherUnavailable, match=r"failed \(timed out\) after 2 tries$"):
            t.info()
    finally:
        s.close()


def test_unknown_api_and_bad_url() -> None:
    with pytest.raises(ValueError, match="^teacher_api: 'openai' is not allowed; use one of 'kd'"):
        make_teacher("http://h:1", "openai")
    with pytest.raises(ValueError, match="is not an http://host:port address"):
        make_teacher("ftp://h:1", "kd")
