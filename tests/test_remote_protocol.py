"""The wire format: arrays as base64 of little-endian bytes, requests checked field by field
with one-line errors naming the field, targets that survive the round trip."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from kd_core.remote.protocol import (
    GenerateRequest,
    ProtocolError,
    ScoreRequest,
    Targets,
    TargetsReply,
    TextItem,
    decode_array,
    encode_array,
    tail_logmass,
)


@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<i4", "<f2", "<f4"])
def test_arrays_round_trip_as_little_endian_bytes(dtype: str) -> None:
    a = (np.arange(24).reshape(2, 3, 4) * 7 - (0 if dtype[1] == "u" else 50)).astype(dtype)
    enc = encode_array(a)
    assert enc["dtype"] == dtype and enc["shape"] == [2, 3, 4]
    assert base64.b64decode(enc["data"]) == a.astype(np.dtype(dtype)).tobytes()
    np.testing.assert_array_equal(decode_array(enc, "x"), a)
    big_endian = a.astype(np.dtype(dtype).newbyteorder(">"))
    assert encode_array(big_endian) == enc  # whatever the host's order, the wire's is little


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "ids: expected an object with dtype, shape and data"),
        ({"dtype": "<f8", "shape": [1], "data": ""}, "ids: dtype '<f8' is not one of"),
        ({"dtype": "<f4", "shape": [2], "data": "AAAA"}, "ids: 3 bytes do not fill shape [2]"),
        ({"dtype": "<f4", "shape": [1], "data": "%%%"}, "ids: data is not valid base64"),
        ({"dtype": "<f4", "shape": [-1], "data": ""}, "ids: shape must be a list of non-neg"),
    ],
)
def test_malformed_arrays_are_named(obj, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_array(obj, "ids")
    assert str(e.value).startswith(message) and e.value.field == "ids"


def test_score_request_round_trip_and_refusals() -> None:
    seqs = [np.array([1, 2, 3, 4], np.int32), np.array([5, 6], np.int32)]
    req = ScoreRequest.from_json(ScoreRequest(2.0, 8, seqs, [2, 1]).to_json())
    assert [s.tolist() for s in req.sequences] == [[1, 2, 3, 4], [5, 6]]
    assert req.prompt_lens == [2, 1] and req.logprob_dtype == "float16"
    texts = ScoreRequest(1.0, 4, texts=[TextItem("p", "r", False, True)]).to_json()
    assert ScoreRequest.from_json(texts).texts == [TextItem("p", "r", False, True)]
    good = ScoreRequest(2.0, 8, seqs, [2, 1]).to_json()
    cases = [
        ({**good, "top_k": 0}, "top_k: expected a whole number from 1 to 1024, got 0"),
        ({**good, "top_k": True}, "top_k: expected a whole number"),
        ({**good, "temperature": "2"}, "temperature: expected a number"),
        ({**good, "logprob_dtype": "bf16"}, "logprob_dtype: 'bf16' is not allowed"),
        ({**good, "prompt_lens": [2]}, "prompt_lens: 1 given for 2 sequences"),
        ({**good, "prompt_lens": [5, 1]}, "prompt_lens[0]: 5 must be from 1 to the sequence's"),
        ({**good, "version": 2}, "version: this teacher speaks protocol 1, the request 2"),
        ({**good, "texts": []}, "sequences: give either sequences (token ids) or texts"),
        ({k: v for k, v in good.items() if k != "sequences"}, "sequences: give either"),
    ]
    for body, message in cases:
        with pytest.raises(ProtocolError) as e:
            ScoreRequest.from_json(body)
        assert str(e.value).startswith(message), (body, str(e.value))
    with pytest.raises(ProtocolError, match="^prompts: expected a list of texts"):
        GenerateRequest.from_json({"prompts": "hello"})


def test_targets_round_trip_with_fp16_and_uint16() -> None:
    rng = np.random.default_rng(0)
    lps = [np.log(rng.dirichlet(np.ones(40), size=r)[:, :5]).astype(np.float32) for r in (3, 0, 2)]
    ids = [rng.integers(0, 40_000, size=(len(lp), 5)).astype(np.int32) for lp in lps]
    chosen = [lp[:, 1].copy() for lp in lps]
    t = Targets(ids, lps, chosen, [tail_logmass(lp) for lp in lps])
    body = TargetsReply("fp", t).to_json(vocab=40_000, logprob_dtype="float16")
    assert (
        body["targets"]["ids"]["dtype"] == "<u2" and body["targets"]["logprobs"]["dtype"] == "<f2"
    )
    back = TargetsReply.from_json(body).targets
    for i in range(3):
        np.testing.assert_array_equal(back.ids[i], ids[i])
        np.testing.assert_array_equal(
            back.logprobs[i], lps[i].astype(np.float16).astype(np.float32)
        )
        np.testing.assert_array_equal(back.chosen[i], chosen[i])  # float32 on the wire
    wide = TargetsReply("fp", t).to_json(vocab=151_936, logprob_dtype="float32")
    assert wide["targets"]["ids"]["dtype"] == "<u4"


def test_tail_is_the_mass_outside_the_top_k() -> None:
    p = np.array([[0.5, 0.25, 0.125], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        tail = tail_logmass(np.log(p).astype(np.float32))
    np.testing.assert_allclose(tail[0], np.log(0.125), rtol=1e-6)
    assert tail[1] < -15  # all the mass in the top-k, up to float32 rounding of log(0.6)
    assert tail[2] == -np.inf  # exactly all of it
