"""The wire protocol of `kd serve-teacher` (version 1): requests, replies, array encoding.

Three routes, JSON bodies:

    GET  /v1/info      -> InfoReply      the served model: fingerprint, tokenizer hash, vocab
    POST /v1/score     ScoreRequest      -> TargetsReply  soft targets on given sequences
    POST /v1/generate  GenerateRequest   -> TargetsReply  the teacher's own answers + targets

Arrays travel as {"dtype", "shape", "data"}: `data` is base64 of the little-endian raw bytes
(numpy's `<u2`, `<f2`, ...), never per-token JSON objects: top-32 targets cost 2 + 2 bytes a
slot as uint16 + float16, ~5.3 after base64, where JSON numbers would take ~20. Targets cover
the response positions of every sequence, in order, flattened: `ids` and `logprobs` are
[N, k] (N = sum of response lengths), `chosen` and `tail` are [N].

What a target is (the same as kd_core.teacher.teacher_pass.soft_targets and the offline cache):
at each response position, the k most likely next tokens under P_T = softmax(logits / T) over
the FULL vocabulary, their log P_T, the log P_T of the token that actually follows, and the
tail: log(1 - sum of the top-k probabilities), the mass of every other token (`tail_logmass`).

Every error reply is {"error": {"message": one line naming the field, "field": name}} with
HTTP 400 (bad request), 401/403 (token), 404 (route), 500 (the teacher failed on it).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"  # kd serve-teacher binds loopback unless told otherwise
DEFAULT_PORT = 8765
MAX_TOP_K = 1024  # KDConfig.top_k's upper bound
# dtypes an array may travel as: ids (uint16 when the vocabulary fits, else uint32 or int32),
# log-probabilities (float16 like the cache, or float32), token ids of sequences (int32).
ARRAY_DTYPES = ("<u2", "<u4", "<i4", "<f2", "<f4")
LOGPROB_DTYPES = {"float16": "<f2", "float32": "<f4"}


class ProtocolError(ValueError):
    """A malformed request or reply; one line naming the field and what is allowed."""

    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field = field_name


# --- arrays -------------------------------------------------------------------------------


def encode_array(a: np.ndarray, dtype: str | None = None) -> dict[str, Any]:
    """{"dtype", "shape", "data"}: base64 of the array's little-endian bytes."""
    dt = np.dtype(dtype) if dtype else a.dtype
    arr = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
    return {
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def decode_array(obj: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """The array `encode_array` wrote; ProtocolError naming `name` if it is malformed."""
    if not isinstance(obj, dict) or not {"dtype", "shape", "data"} <= obj.keys():
        raise ProtocolError(f"{name}: expected an object with dtype, shape and data", name)
    dtype, shape = obj["dtype"], obj["shape"]
    if dtype not in ARRAY_DTYPES:
        raise ProtocolError(
            f"{name}: dtype {dtype!r} is not one of {', '.join(ARRAY_DTYPES)}", name
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"{name}: shape must be a list of non-negative whole numbers", name)
    if ndim is not None and len(shape) != ndim:
        raise ProtocolError(f"{name}: expected {ndim} dimensions, got {len(shape)}", name)
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (ValueError, TypeError):
        raise ProtocolError(f"{name}: data is not valid base64", name) from None
    dt = np.dtype(dtype)
    if len(raw) != dt.itemsize * math.prod(shape):
        raise ProtocolError(f"{name}: {len(raw)} bytes do not fill shape {shape} of {dtype}", name)
    return np.frombuffer(raw, dt).reshape(shape).astype(dt.newbyteorder("="))


def pack_sequences(seqs: list[np.ndarray]) -> dict[str, Any]:
    """Sequences of token ids as one flat int32 array and their lengths."""
    flat = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
    return {"tokens": encode_array(flat, "<i4"), "lengths": [int(len(s)) for s in seqs]}


def unpack_sequences(obj: Any, name: str) -> list[np.ndarray]:
    if not isinstance(obj, dict) or "tokens" not in obj or "lengths" not in obj:
        raise ProtocolError(f"{name}: expected an object with tokens and lengths", name)
    flat = decode_array(obj["tokens"], f"{name}.tokens", ndim=1).astype(np.int32)
    lengths = _int_list(obj["lengths"], f"{name}.lengths", lo=0)
    if sum(lengths) != flat.shape[0]:
        raise ProtocolError(f"{name}: lengths add up to {sum(lengths)}, tokens hold {len(flat)}")
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return [flat[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]


# --- field checks -------------------------------------------------------------------------


def _int_list(value: Any, name: str, lo: int = 0) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in value
    ):
        raise ProtocolError(f"{name}: expected a list of whole numbers >= {lo}", name)
    return value


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: Any = None) -> Any:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"{name}: expected a number from {lo:g} to {hi:g}, got {value!r}", name)
    if not lo <= value <= hi:
        raise ProtocolError(f"{name}: {value!r} is outside {lo:g} to {hi:g}", name)
    return value


def _whole(body: dict[str, Any], name: str, lo: int, hi: int, default: Any = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(
            f"{name}: expected a whole number from {lo} to {hi}, got {value!r}", name
        )
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ProtocolError(f"{name}: {value!r} is not allowed; use one of {allowed}", name)
    return value


def check_version(body: dict[str, Any]) -> None:
    v = body.get("version", PROTOCOL_VERSION)
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"version: this teacher speaks protocol {PROTOCOL_VERSION}, the request {v!r}",
            "version",
        )


# --- requests -----------------------------------------------------------------------------


@dataclass
class TextItem:
    """A sequence given as text (cross-tokenizer pairs): the teacher tokenizes it. `chat`:
    the prompt is a user message in the teacher's chat template (as kd formats prompts);
    otherwise it is encoded as plain text. `eos`: the response ends with the teacher's EOS."""

    prompt: str
    response: str
    chat: bool = True
    eos: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "chat": self.chat,
            "eos": self.eos,
        }

    @classmethod
    def from_json(cls, obj: Any, name: str) -> TextItem:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{name}: expected an object with prompt and response", name)
        p, r = obj.get("prompt"), obj.get("response")
        if not isinstance(p, str) or not isinstance(r, str):
            raise ProtocolError(f"{name}: prompt and response must be text", name)
        chat, eos = obj.get("chat", True), obj.get("eos", False)
        if not isinstance(chat, bool) or not isinstance(eos, bool):
            raise ProtocolError(f"{name}: chat and eos must be true or false", name)
        return cls(p, r, chat, eos)


@dataclass
class ScoreRequest:
    """Soft targets on given sequences: token ids with their prompt lengths, or text."""

    temperature: float
    top_k: int
    sequences: list[np.ndarray] | None = None
    prompt_lens: list[int] | None = None
    texts: list[TextItem] | None = None
    logprob_dtype: str = "float16"  # float16 is what the cache keeps; float32 for exactness

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "logprob_dtype": self.logprob_dtype,
        }
        if self.texts is not None:
            body["texts"] = [t.to_json() for t in self.texts]
        else:
            body["sequences"] = pack_sequences(self.sequences or [])
            body["prompt_lens"] = list(self.prompt_lens or [])
        return body

    @classmethod
    def from_json(cls, body: Any) -> ScoreRequest:
        if not isinstance(body, dict):
            raise ProtocolError("body: expected a JSON object", "body")
        check_version(body)
        req = cls(
            temperature=_number(body, "temperature", 0.05, 100.0),
            top_k=_whole(body, "top_k", 1, MAX_TOP_K),
            logprob_dtype=_choice(body, "logprob_dtype", tuple(LOGPROB_DTYPES), "float16"),
        )
        if ("texts" in body) == ("sequences" in body):
            raise ProtocolError(
                "sequences: give either sequences (token ids) or texts", "sequences"
            )
        if "texts" in body:
            if not isinstance(body["texts"], list):
                raise ProtocolError("texts: expected a list of {prompt, response}", "texts")
            req.texts = [TextItem.from_json(t, f"texts[{i}]") for i, t in enumerate(body["texts"])]
            return req
        req.sequences = unpack_sequences(body["sequences"], "sequences")
        req.prompt_lens = _int_list(body.get("prompt_lens"), "prompt_lens", lo=1)
        check_prompt_lens(req.sequences, req.prompt_lens)
        return req


def check_prompt_lens(sequences: list[np.ndarray], prompt_lens: list[int]) -> None:
    """Each sequence holds its prompt (>= 1 token: position p - 1 predicts the first response
    token) and a response (>= 0 tokens)."""
    if len(prompt_lens) != len(sequences):
        raise ProtocolError(
            f"prompt_lens: {len(prompt_lens)} given for {len(sequences)} sequences", "prompt_lens"
        )
    for i, (s, p) in enumerate(zip(sequences, prompt_lens, strict=True)):
        if not 1 <= p <= len(s):
            raise ProtocolError(
                f"prompt_lens[{i}]: {p} must be from 1 to the sequence's length {len(s)}",
                "prompt_lens",
            )


@dataclass
class GenerateRequest:
    """The teacher's own answers to prompts (its chat template, cut to fit as the teacher
    pass cuts them), sampled at `teacher_temperature` from MLX's random state seeded with
    `seed` (so the same request gives the same answers), with soft targets when `with_targets`."""

    prompts: list[str]
    max_tokens: int = 128
    teacher_temperature: float = 0.7
    seed: int = 0
    max_seq_length: int = 512
    temperature: float = 2.0
    top_k: int = 32
    with_targets: bool = True
    logprob_dtype: str = "float16"

    def to_json(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, **{k: getattr(self, k) for k in _GEN_FIELDS}}

    @classmethod
    def from_json(cls, body: Any) -> GenerateRequest:
        if not isinstance(body, dict):
            raise ProtocolError("body: expected a JSON object", "body")
        check_version(body)
        prompts = body.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ProtocolError("prompts: expected a list of texts", "prompts")
        with_targets = body.get("with_targets", True)
        if not isinstance(with_targets, bool):
            raise ProtocolError("with_targets: must be true or false", "with_targets")
        return cls(
            prompts=prompts,
            max_tokens=_whole(body, "max_tokens", 1, 32768, 128),
            teacher_temperature=_number(body, "teacher_temperature", 0.0, 5.0, 0.7),
            seed=_whole(body, "seed", 0, 2**32 - 1, 0),
            max_seq_length=_whole(body, "max_seq_length", 8, 1 << 20, 512),
            temperature=_number(body, "temperature", 0.05, 100.0, 2.0),
            top_k=_whole(body, "top_k", 1, MAX_TOP_K, 32),
            with_targets=with_targets,
            logprob_dtype=_choice(body, "logprob_dtype", tuple(LOGPROB_DTYPES), "float16"),
        )


_GEN_FIELDS = (
    "prompts",
    "max_tokens",
    "teacher_temperature",
    "seed",
    "max_seq_length",
    "temperature",
    "top_k",
    "with_targets",
    "logprob_dtype",
)


# --- replies ------------------------------------------------------------------------------


@dataclass
class Targets:
    """Soft targets per sequence, shaped as kd_core.teacher.teacher_pass.soft_targets
    returns them."""

    ids: list[np.ndarray]  # [R, k] int32 per sequence
    logprobs: list[np.ndarray]  # [R, k] float32 log P_T
    chosen: list[np.ndarray]  # [R] float32 log P_T of the token that follows
    tail: list[np.ndarray]  # [R] float32 log(1 - top-k mass)

    def as_tuple(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        return self.ids, self.logprobs, self.chosen


def tail_logmass(logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum exp(top-k log-probs)) per row, summed in float64 so that a tiny tail
    survives; -inf when the sum reaches 1. Where the top-k hold everything, the float32
    rounding of their log-probs leaves about k * 6e-8 (a log near -17) instead."""
    mass = np.exp(logprobs.astype(np.float64)).sum(axis=-1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - mass, 0.0, 1.0)).astype(np.float32)


def encode_targets(t: Targets, vocab: int, logprob_dtype: str = "float16") -> dict[str, Any]:
    """Flattened over all sequences' response positions; ids as uint16 when `vocab` fits
    (as the cache stores them), else uint32."""
    k = t.ids[0].shape[1] if t.ids else 0
    cat = lambda xs, shape, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)  # noqa: E731
    id_dtype = "<u2" if vocab <= 1 << 16 else "<u4"
    return {
        "lengths": [int(x.shape[0]) for x in t.ids],
        "ids": encode_array(cat(t.ids, (0, k), np.int64), id_dtype),
        "logprobs": encode_array(
            cat(t.logprobs, (0, k), np.float32), LOGPROB_DTYPES[logprob_dtype]
        ),
        "chosen": encode_array(cat(t.chosen, (0,), np.float32), "<f4"),
        "tail": encode_array(cat(t.tail, (0,), np.float32), "<f4"),
    }


def decode_targets(obj: Any, name: str = "targets") -> Targets:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{name}: expected an object", name)
    lengths = _int_list(obj.get("lengths"), f"{name}.lengths")
    ids = decode_array(obj.get("ids"), f"{name}.ids", ndim=2).astype(np.int32)
    lps = decode_array(obj.get("logprobs"), f"{name}.logprobs", ndim=2).astype(np.float32)
    chosen = decode_array(obj.get("chosen"), f"{name}.chosen", ndim=1).astype(np.float32)
    tail = decode_array(obj.get("tail"), f"{name}.tail", ndim=1).astype(np.float32)
    n = sum(lengths)
    if not ids.shape[0] == lps.shape[0] == chosen.shape[0] == tail.shape[0] == n:
        raise ProtocolError(f"{name}: arrays do not hold {n} positions", name)
    if ids.shape != lps.shape:
        raise ProtocolError(f"{name}: ids {ids.shape} and logprobs {lps.shape} differ", name)
    b = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cut = lambda a: [a[b[i] : b[i + 1]] for i in range(len(lengths))]  # noqa: E731
    return Targets(cut(ids), cut(lps), cut(chosen), cut(tail))


@dataclass
class TargetsReply:
    """What /v1/score and /v1/generate answer. `sequences`/`prompt_lens`: the teacher-id
    sequences the targets are on (echoed for text input and for generate); `texts`/
    `char_ends`/`prompt_cut`: generate only (what the offline cache keeps beside targets)."""

    fingerprint: str
    targets: Targets | None
    sequences: list[np.ndarray] | None = None
    prompt_lens: list[int] | None = None
    prompt_cut: list[bool] | None = None
    texts: list[str] | None = None
    char_ends: list[np.ndarray] | None = None

    def to_json(self, vocab: int, logprob_dtype: str) -> dict[str, Any]:
        body: dict[str, Any] = {"version": PROTOCOL_VERSION, "fingerprint": self.fingerprint}
        if self.targets is not None:
            body["targets"] = encode_targets(self.targets, vocab, logprob_dtype)
        if self.sequences is not None:
            body["sequences"] = pack_sequences(self.sequences)
            body["prompt_lens"] = list(self.prompt_lens or [])
        if self.prompt_cut is not None:
            body["prompt_cut"] = list(self.prompt_cut)
        if self.texts is not None and self.char_ends is not None:
            body["texts"] = self.texts
            body["char_ends"] = pack_sequences(self.char_ends)
        return body

    @classmethod
    def from_json(cls, body: Any) -> TargetsReply:
        if not isinstance(body, dict) or not isinstance(body.get("fingerprint"), str):
            raise ProtocolError("reply: expected an object with a fingerprint", "fingerprint")
        check_version(body)
        out = cls(body["fingerprint"], None)
        if "targets" in body:
            out.targets = decode_targets(body["targets"])
        if "sequences" in body:
            out.sequences = unpack_sequences(body["sequences"], "sequences")
            out.prompt_lens = _int_list(body.get("prompt_lens"), "prompt_lens")
        if "prompt_cut" in body:
            out.prompt_cut = [bool(x) for x in body["prompt_cut"]]
        if "texts" in body:
            out.texts = [str(t) for t in body["texts"]]
            out.char_ends = unpack_sequences(body["char_ends"], "char_ends")
        return out


@dataclass
class InfoReply:
    """GET /v1/info: what the server serves. `fingerprint` and `tokenizer` are the hashes of
    the weights and of the tokenizer files that key kd's teacher cache (the teacher's
    ModelIdentity, kd_core/remote/server.py: model_identity)."""

    model: str
    fingerprint: str
    tokenizer: str
    vocab_size: int
    kd_version: str
    max_top_k: int = MAX_TOP_K
    api: str = "kd"
    protocol: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "api": self.api,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "kd_version": self.kd_version,
            "max_top_k": self.max_top_k,
            **self.extra,
        }

    @classmethod
    def from_json(cls, body: Any) -> InfoReply:
        if not isinstance(body, dict):
            raise ProtocolError("info: expected a JSON object", "info")
        try:
            known = ("model", "fingerprint", "tokenizer", "vocab_size", "kd_version", "max_top_k")
            out = cls(
                model=str(body["model"]),
                fingerprint=str(body["fingerprint"]),
                tokenizer=str(body["tokenizer"]),
                vocab_size=int(body["vocab_size"]),
                kd_version=str(body["kd_version"]),
                max_top_k=int(body["max_top_k"]),
                api=str(body.get("api", "kd")),
                protocol=int(body.get("version", PROTOCOL_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"info: missing or malformed field {e}", "info") from None
        out.extra = {k: v for k, v in body.items() if k not in (*known, "api", "version")}
        return out


def error_body(message: str, field_name: str = "") -> dict[str, Any]:
    return {
        "error": {"message": message.splitlines()[0] if message else "error", "field": field_name}
    }


def encode_tokenizer(files: dict[str, bytes]) -> dict[str, Any]:
    """GET /v1/tokenizer: the teacher's tokenizer files (name -> base64 of the bytes), so a
    trainer tokenizes, formats prompts and aligns vocabularies exactly as the server does."""
    return {
        "version": PROTOCOL_VERSION,
        "files": {n: base64.b64encode(b).decode("ascii") for n, b in sorted(files.items())},
    }


def decode_tokenizer(body: Any) -> dict[str, bytes]:
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, dict) or not files:
        raise ProtocolError("tokenizer: expected an object of files", "tokenizer")
    out = {}
    for name, data in files.items():
        # Names are written into a folder of the client's: plain file names only.
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name[0] == ".":
            raise ProtocolError(f"tokenizer: {name!r} is not a plain file name", "tokenizer")
        try:
            out[name] = base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            raise ProtocolError(f"tokenizer: {name} is not valid base64", "tokenizer") from None
    return out


def bytes_per_position(k: int, vocab: int, logprob_dtype: str = "float16") -> float:
    """Raw bytes one scored position costs in a reply before base64 (which adds 4/3):
    k ids + k log-probs + chosen (float32) + tail (float32)."""
    id_bytes = 2 if vocab <= 1 << 16 else 4
    lp_bytes = 2 if logprob_dtype == "float16" else 4
    return k * (id_bytes + lp_bytes) + 8
