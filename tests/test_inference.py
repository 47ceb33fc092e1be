"""The Viewer's worker protocol, run as the real child process on the tiny pair.

Replies arrive as the typed dataclasses of kd_tui/viewer_protocol.py (read with isinstance and
attributes); test_viewer_protocol.py checks that every kind round-trips through JSON."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import pytest

from kd_tui.inference import InferenceClient, Slot, tokenizer_verdict
from kd_tui.viewer_protocol import (
    Done,
    ErrorReply,
    Finished,
    Inspection,
    Ready,
    Reply,
    Status,
    Token,
    WorkerExit,
)


class Replies:
    """Collects the worker's replies (they arrive on the client's reader thread)."""

    def __init__(self) -> None:
        self.q: queue.Queue[Reply] = queue.Queue()
        self.seen: list[Reply] = []

    def __call__(self, reply: Reply) -> None:
        self.q.put(reply)

    def until(self, cond: Callable[[Reply], bool], timeout: float = 60.0) -> Reply:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0, f"no matching reply; got {self.seen[-5:]}"
            try:
                r = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(r)
            if cond(r):
                return r

    def of(self, rid: int) -> list[Reply]:
        return [r for r in self.seen if r.id == rid]


@pytest.fixture(scope="module")
def worker():
    replies = Replies()
    client = InferenceClient(replies)
    yield client, replies
    client.close()


def test_generate_streams_tokens_then_done(tiny_pair, worker) -> None:
    client, replies = worker
    slots = [Slot("teacher", str(tiny_pair.teacher)), Slot("student", str(tiny_pair.student))]
    rid = client.generate("Explain recursion.", slots, temperature=0.0, max_tokens=6)
    replies.until(lambda r: r.id == rid and isinstance(r, Finished))
    mine = replies.of(rid)
    for name in ("teacher", "student"):
        tokens = [r for r in mine if isinstance(r, Token) and r.slot == name]
        done = [r for r in mine if isinstance(r, Done) and r.slot == name]
        assert len(done) == 1 and done[0].finish_reason in ("stop", "length")
        streamed = [r.token for r in tokens if r.token is not None]
        assert streamed == done[0].tokens and 1 <= len(streamed) <= 6
        assert "".join(r.text for r in tokens) == done[0].text
    # side by side: the two answers are interleaved, not one after the other
    order = [r.slot for r in mine if isinstance(r, Token)]
    assert order[:2] == ["teacher", "student"]
    # greedy is deterministic
    again = client.generate("Explain recursion.", slots[:1], temperature=0.0, max_tokens=6)
    replies.until(lambda r: r.id == again and isinstance(r, Finished))
    first = next(r for r in mine if isinstance(r, Done) and r.slot == "teacher")
    second = next(r for r in replies.of(again) if isinstance(r, Done))
    assert second.tokens == first.tokens


def test_bad_model_is_one_line_and_worker_lives(tiny_pair, tmp_path, worker) -> None:
    client, replies = worker
    bad = tmp_path / "no-model"
    bad.mkdir()
    rid = client.generate(
        "hi",
        [Slot("teacher", str(bad)), Slot("student", str(tiny_pair.student), str(tmp_path))],
        max_tokens=3,
    )
    replies.until(lambda r: r.id == rid and isinstance(r, Finished))
    errors = {r.slot: r.message for r in replies.of(rid) if isinstance(r, ErrorReply)}
    assert "no config.json" in errors["teacher"] and "\n" not in errors["teacher"]
    assert "adapters.safetensors" in errors["student"]  # an adapter folder without adapters
    assert client.alive
    # malformed requests get an error reply, not a crash
    assert client.proc is not None and client.proc.stdin is not None
    client.proc.stdin.write("this is not json\n")
    client.proc.stdin.flush()
    replies.until(lambda r: isinstance(r, ErrorReply) and "not a JSON request" in r.message)
    rid = client.send("frobnicate")
    r = replies.until(lambda r: r.id == rid)
    assert isinstance(r, ErrorReply) and "unknown op" in r.message
    assert client.alive


def test_inspect_same_model_has_zero_kl(tiny_pair, worker) -> None:
    client, replies = worker
    teacher = Slot("teacher", str(tiny_pair.teacher))
    rid = client.generate("Plan a picnic.", [teacher], temperature=0.0, max_tokens=5)
    done = replies.until(lambda r: r.id == rid and isinstance(r, Done))
    assert isinstance(done, Done)
    answer = done.tokens
    assert answer
    rid = client.inspect(
        "Plan a picnic.",
        answer,
        [teacher, Slot("student", str(tiny_pair.teacher)), Slot("other", str(tiny_pair.student))],
        top_k=4,
    )
    r = replies.until(lambda r: r.id == rid and not isinstance(r, Status))
    assert isinstance(r, Inspection)
    positions = r.positions
    assert len(positions) == len(answer)
    for pos in positions:
        t, same, other = (pos["slots"][k] for k in ("teacher", "student", "other"))
        assert len(t["top"]) == 4
        probs = [p for _, p in t["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert same["kl"] == pytest.approx(0.0, abs=1e-5) and same["agree"] is True
        assert same["top"] == t["top"]
        assert other["kl"] is not None and other["kl"] >= 0  # same tokenizer, other weights
    # greedy decoding: the teacher's answer token is its own top-1 at every position
    assert all(p["slots"]["teacher"]["top"][0][0] == p["token"] for p in positions)


def test_cancel_stops_generation(tiny_pair, worker) -> None:
    client, replies = worker
    rid = client.generate(
        "Tell a long story.",
        [Slot("teacher", str(tiny_pair.teacher))],
        temperature=1.0,
        max_tokens=4000,
    )
    replies.until(lambda r: r.id == rid and isinstance(r, Token))
    client.cancel()
    r = replies.until(lambda r: r.id == rid and isinstance(r, Done), timeout=30)
    assert isinstance(r, Done)
    if r.finish_reason != "stop":  # an early EOS may win the race
        assert r.finish_reason == "cancelled" and len(r.tokens) < 4000
    replies.until(lambda r: r.id == rid and isinstance(r, Finished))


def test_worker_death_is_reported_and_restarts(tiny_pair) -> None:
    replies = Replies()
    client = InferenceClient(replies)
    try:
        client.start()
        replies.until(lambda r: isinstance(r, Ready))
        assert client.proc is not None
        client.proc.kill()
        r = replies.until(lambda r: isinstance(r, WorkerExit))
        assert isinstance(r, WorkerExit) and r.message.startswith("viewer worker stopped")
        rid = client.generate("hi", [Slot("teacher", str(tiny_pair.teacher))], max_tokens=2)
        replies.until(lambda r: r.id == rid and isinstance(r, Finished))
    finally:
        client.close()
    assert not client.alive


def test_tokenizer_verdict(tiny_pair, tmp_path) -> None:
    v = tokenizer_verdict(str(tiny_pair.teacher), str(tiny_pair.student))
    assert v["strategy"] == "truncate" and v["identical"] is True
    bad = tokenizer_verdict(str(tmp_path), str(tiny_pair.student))
    assert bad["strategy"] == "error" and "\n" not in bad["explanation"]


def test_inspect_other_vocabulary(tiny_pair, tmp_path, worker) -> None:
    """A student with another tokenizer: its own top-k strings, positions aligned by
    characters; KL over the shared tokens where a span is one token on both sides, none
    elsewhere."""
    from pydoc_data.topics import topics

    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer(list(topics.values())[40:60], 300, tok)
    model, cfg = new_llama(LlamaSize(32, 1, 64, 4), 300, seed=3)
    save_model(model, cfg, tmp_path / "other", tok, eos_id(tok))
    client, replies = worker
    teacher = Slot("teacher", str(tiny_pair.teacher))
    rid = client.generate("Name three colours.", [teacher], temperature=0.0, max_tokens=12)
    done = replies.until(lambda r: r.id == rid and isinstance(r, Done))
    assert isinstance(done, Done)
    answer = done.tokens
    rid = client.inspect(
        "Name three colours.", answer, [teacher, Slot("student", str(tmp_path / "other"))], top_k=3
    )
    r = replies.until(lambda r: r.id == rid and not isinstance(r, Status))
    assert isinstance(r, Inspection) and len(r.positions) == len(answer)
    kls = []
    for pos in r.positions:
        s = pos["slots"]["student"]
        assert len(s["top"]) == 3 and isinstance(s["agree"], bool)
        assert s["kl"] is None or s["kl"] >= 0
        kls.append(s["kl"])
    assert any(k is not None for k in kls), kls  # some spans are one token on both sides
