"""The Viewer's typed worker protocol: every reply and request kind round-trips through its JSON
line, and lines that are not replies become one-line errors instead of exceptions."""

from __future__ import annotations

import json

import pytest

from kd_tui.viewer_protocol import (
    REPLY_TYPES,
    REQUEST_TYPES,
    Cancel,
    Cancelled,
    Done,
    ErrorReply,
    Finished,
    Generate,
    Inspect,
    Inspection,
    Ready,
    Reply,
    Request,
    Shutdown,
    Slot,
    Status,
    Token,
    WorkerExit,
    reply_from_json,
    request_from_dict,
    request_from_json,
)

POSITION = {
    "index": 0,
    "token": "He",
    "slots": {
        "teacher": {"top": [["He", 0.9], ["She", 0.05]], "p_token": 0.9},
        "student": {"top": [["She", 0.6]], "p_token": 0.3, "kl": 0.42, "agree": False},
    },
}

REPLIES: list[Reply] = [
    Ready(pid=1234),
    Status(id=1, message="loading teacher (demo-teacher)"),
    Token(id=1, slot="teacher", text="He", token=41),
    Token(id=1, slot="student", text="llo", token=None),  # the detokenizer's final flush
    Done(id=1, slot="teacher", tokens=[41, 7], text="Hello", finish_reason="length"),
    ErrorReply(id=1, slot="adapted", message="adapter: /x has no adapters.safetensors"),
    ErrorReply(id=None, message="not a JSON request: 'oops'"),
    Finished(id=1),
    Cancelled(id=3),
    Inspection(id=2, positions=[POSITION]),  # type: ignore[list-item]
    WorkerExit(message="viewer worker stopped: exit code -9"),
]


def test_every_reply_kind_is_covered() -> None:
    assert {type(r) for r in REPLIES} == set(REPLY_TYPES.values())
    assert len(REPLY_TYPES) == 9


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: f"{r.kind}-{r.id}")
def test_reply_round_trip(reply: Reply) -> None:
    line = reply.to_json()
    assert "\n" not in line
    wire = json.loads(line)
    assert wire["type"] == reply.kind and wire["id"] == reply.id  # the dict protocol's keys
    back = reply_from_json(line)
    assert type(back) is type(reply) and back == reply


REQUESTS: list[Request] = [
    Generate(
        id=1,
        prompt="Explain recursion.",
        slots=[Slot("teacher", "t"), Slot("adapted", "s", "/out/thinking")],
        temperature=0.0,
        max_tokens=6,
        seed=3,
    ),
    Inspect(id=2, prompt="p", answer=[4, 5, 6], slots=[Slot("teacher", "t")], top_k=3),
    Cancel(id=3),
    Shutdown(),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.kind)
def test_request_round_trip(req: Request) -> None:
    wire = json.loads(req.to_json())
    assert wire["op"] == req.kind
    back = request_from_json(req.to_json())
    assert type(back) is type(req) and back == req
    assert {type(r) for r in REQUESTS} == set(REQUEST_TYPES.values())


def test_request_slots_from_plain_mappings_and_defaults() -> None:
    # what an older client (or a hand-written line) sends: slots as objects, fields omitted
    req = request_from_dict(
        {"id": 7, "op": "generate", "prompt": "hi", "slots": [{"name": "a", "model": "m"}]}
    )
    assert isinstance(req, Generate) and req.slots == [Slot("a", "m")]
    assert (req.temperature, req.max_tokens, req.seed) == (0.7, 64, 0)
    with pytest.raises(ValueError, match="unknown op 'frobnicate'"):
        request_from_dict({"id": 1, "op": "frobnicate"})
    with pytest.raises(ValueError, match="inspect"):
        request_from_dict({"id": 1, "op": "inspect", "prompt": "p"})  # no answer, no slots


def test_unknown_fields_are_ignored() -> None:
    # a newer worker may add fields: an older client still reads the reply
    r = reply_from_json('{"type":"token","id":1,"slot":"teacher","text":"a","token":3,"logp":-0.1}')
    assert r == Token(id=1, slot="teacher", text="a", token=3)


@pytest.mark.parametrize(
    "line",
    [
        "not json at all",
        "[1, 2]",
        '{"type": "teleport", "id": 1}',
        '{"type": "token", "id": 1}',  # fields missing
        '{"id": 1}',
        "x" * 500,
    ],
)
def test_unreadable_line_is_one_line_error(line: str) -> None:
    r = reply_from_json(line)
    assert isinstance(r, ErrorReply) and r.id is None and r.slot is None
    assert "unreadable reply" in r.message and "\n" not in r.message and len(r.message) < 300


def test_worker_parses_requests_into_types() -> None:
    """The worker's reader turns each line into a request, or a Rejected that keeps the id."""
    from kd_tui.infer_worker import Rejected, parse_request

    assert parse_request(Cancel(id=4).to_json()) == Cancel(id=4)
    bad = parse_request("this is not json")
    assert isinstance(bad, Rejected) and bad.id is None and "not a JSON request" in bad.message
    unknown = parse_request('{"id": 9, "op": "frobnicate"}')
    assert isinstance(unknown, Rejected) and unknown.id == 9 and "unknown op" in unknown.message
