"""Clients for a teacher on another machine: kd's own server and the servers users have.

One interface, `RemoteTeacher`: `info()`, `score(sequences, prompt_lens, temperature, top_k)`
shaped exactly like kd_core.teacher.teacher_pass.soft_targets' return value (per sequence [R, k]
int32 ids, [R, k] float32 log P_T, [R] float32 chosen), and `generate(...)` where the server
samples. `make_teacher(url, api)` picks the implementation (`teacher_api`):

- "kd" (`kd serve-teacher`, kd_core.remote.server): everything, at any temperature and top-k.
- "vllm": given-text scoring through /v1/completions with `prompt_logprobs` = k (token ids
  in, max_tokens 1). k is capped by the server's --max-logprobs (default 20); the rest of
  the vocabulary is the tail bucket. vLLM's prompt log-probs are log-softmax of the raw
  logits (T = 1), and a top-k at T = 1 does not give a top-k at T != 1 (the tail's shape is
  unknown), so T != 1 is refused rather than approximated.
- "sglang": the same through SGLang's native /generate (`input_ids`, `return_logprob`,
  `logprob_start_len` 0, `top_logprobs_num` k, max_new_tokens 0); also T = 1 only (stock
  SGLang returns log-probs before temperature scaling).
- "mlx_lm" (`mlx_lm.server`): the offline pass only. It returns top log-probs (at most 11,
  at T = 1, after its logit processors, of which kd sets none) only for tokens it generates
  itself, so `generate` asks for each answer twice with the same seed: once for the chosen
  tokens' ids and log-probs, once for the top-k (the server reports one or the other).
  Scoring a given text is refused with one line naming what the server lacks.

Every failure is a RemoteTeacherError with one line: TeacherUnavailable when the server
cannot be reached or goes away (connect and read timeouts, then bounded retries with
exponential backoff: the message names the host, what failed and after how many tries),
TeacherRefused when it answers an error, TeacherUnsupported for a mode an API cannot serve,
FingerprintMismatch for a server whose model is not the one expected.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kd_core.remote.protocol import (
    MAX_TOP_K,
    GenerateRequest,
    InfoReply,
    ProtocolError,
    ScoreRequest,
    Targets,
    TargetsReply,
    TextItem,
    check_prompt_lens,
    tail_logmass,
)

TEACHER_APIS = ("kd", "vllm", "sglang", "mlx_lm")
RETRY_STATUS = (502, 503, 504)  # a proxy or a server still starting / restarting
VLLM_MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MLX_LM_MAX_TOP_K = 11  # mlx_lm.server's top_logprobs limit

Scored = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]


class RemoteTeacherError(RuntimeError):
    """Anything that went wrong with a remote teacher; the message is one line."""


class TeacherUnavailable(RemoteTeacherError):
    """The server cannot be reached or went away (after the retries)."""


class TeacherRefused(RemoteTeacherError):
    """The server answered with an error (or with something that is not an answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TeacherUnsupported(RemoteTeacherError):
    """This teacher_api cannot serve what was asked (the message says what it lacks)."""


class FingerprintMismatch(RemoteTeacherError):
    """The server serves another model than the one the cache / checkpoint was made with."""


@dataclass
class RetryPolicy:
    """Timeouts and retries of every request. The backoff doubles from `backoff_s` up to
    `max_backoff_s`; with the defaults a server that is gone is reported after 5 tries and
    0.25 + 0.5 + 1 + 2 = 3.75 s of waiting (plus one connect timeout per try at worst)."""

    retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0  # a big score request on a busy teacher takes a while

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "connection closed by the server"
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0]}" if text else e.__class__.__name__


def _error_message(data: bytes) -> str:
    """The one line an error reply holds: kd's and SGLang's {"error": {"message"}}, vLLM's
    {"error": {...}} or its older flat {"object": "error", "message"}, mlx_lm's
    {"error": "..."}, or the body's first line."""
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return lines[0] if lines else "(empty reply)"
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"]).strip().split("\n")[0]
        if isinstance(err, str):
            return err.strip().split("\n")[0]
        if "detail" in body:  # FastAPI's validation errors
            return str(body["detail"]).split("\n")[0][:300]
    return str(body)[:300]


class HttpJson:
    """JSON over HTTP/1.1 to one server: a kept-alive connection, timeouts, bounded retries
    with exponential backoff, one-line errors; counts the body bytes sent and received."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        name: str = "kd",
    ) -> None:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"teacher: {url!r} is not an http://host:port address")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host, self.scheme = parts.hostname, parts.scheme
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.token, self.policy, self.name = token, policy or RetryPolicy(), name
        self.bytes_sent = self.bytes_received = self.requests = 0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            status, data = self._with_retries(method, path, payload)
        if status >= 400:
            raise TeacherRefused(
                f"{self.name} teacher at {self.url}: {method} {path} answered {status}: "
                f"{_error_message(data)}",
                status,
            )
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TeacherRefused(
                f"{self.name} teacher at {self.url}: {method} {path} answered something "
                "that is not JSON"
            ) from None

    def _with_retries(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        tries = self.policy.retries + 1
        last = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.policy.delay(attempt))
            try:
                status, data = self._send(method, path, payload)
            except (OSError, http.client.HTTPException) as e:
                last = _describe(e)
                self.close()
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status}: {_error_message(data)}"
                continue
            return status, data
        raise TeacherUnavailable(
            f"{self.name} teacher at {self.host}:{self.port}: {method} {path} failed "
            f"({last}) after {tries} tries"
        )

    def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        """One exchange; a kept-alive connection the server closed meanwhile is retried at
        once on a new one (not a failure of the server)."""
        reused = self._conn is not None
        try:
            return self._exchange(method, path, payload)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            return self._exchange(method, path, payload)

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.host, self.port, timeout=self.policy.connect_timeout_s)
            conn.connect()
            conn.sock.settimeout(self.policy.read_timeout_s)  # type: ignore[union-attr]
            self._conn = conn
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._conn.request(method, self.prefix + path, body=payload, headers=headers)
        resp = self._conn.getresponse()
        data = resp.read()
        self.requests += 1
        self.bytes_sent += len(payload or b"")
        self.bytes_received += len(data)
        if resp.will_close:
            self.close()
        return resp.status, data


@dataclass
class Generated:
    """The teacher's own answers. `sequences` (prompt + response, teacher ids) is None when
    the server does not report the prompt's ids (mlx_lm without a tokenizer to render it);
    `responses` and `prompt_lens` are always there."""

    responses: list[np.ndarray]
    prompt_lens: list[int]
    sequences: list[np.ndarray] | None
    targets: Targets | None
    fingerprint: str
    prompt_cut: list[bool] | None = None
    texts: list[str] | None = None
    char_ends: list[np.ndarray] | None = None


@dataclass
class RemoteTeacher:
    """A teacher behind a URL. Subclasses implement info() and score(); generate() where the
    server can. `expected_fingerprint`: when set, every reply that names a fingerprint must
    match it (a server restarted with another model mid-run is refused)."""

    url: str
    token: str | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    expected_fingerprint: str | None = None
    api = "kd"

    def __post_init__(self) -> None:
        self.http = HttpJson(self.url, self.token, self.policy, name=self.api)
        self._info: InfoReply | None = None

    def info(self) -> InfoReply:
        raise NotImplementedError

    @property
    def max_top_k(self) -> int:
        return self.info().max_top_k

    def score(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Scored:
        """soft_targets' result for these sequences: ([R, k] ids, [R, k] log P_T, [R] chosen)."""
        return self.targets(sequences, prompt_lens, temperature, top_k).as_tuple()

    def targets(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Targets:
        raise NotImplementedError

    def generate(self, prompts: list[str], **settings: Any) -> Generated:
        raise TeacherUnsupported(
            f"{self.api} teacher at {self.http.url}: generating answers is not offered through "
            'this API; use teacher_api = "kd" or "mlx_lm" for the teacher pass'
        )

    def close(self) -> None:
        self.http.close()

    def check(self, fingerprint: str) -> None:
        if self.expected_fingerprint is not None and fingerprint != self.expected_fingerprint:
            raise FingerprintMismatch(
                f"{self.api} teacher at {self.http.url} now serves model {fingerprint}, not "
                f"{self.expected_fingerprint} (the server was restarted with another model)"
            )

    def _check_k(self, top_k: int) -> None:
        if not 1 <= top_k <= self.max_top_k:
            raise TeacherUnsupported(
                f"top_k: {top_k} is more than the {self.api} teacher at {self.http.url} "
                f"returns (at most {self.max_top_k}); lower top_k"
            )


def check_fingerprint(teacher: RemoteTeacher, expected: str) -> InfoReply:
    """The server's info if it serves the model `expected` names (kd: the weights'
    fingerprint; other APIs: a hash of the served model's name); else FingerprintMismatch.
    From then on every reply is checked against it too."""
    info = teacher.info()
    if info.fingerprint != expected:
        raise FingerprintMismatch(
            f"{teacher.api} teacher at {teacher.http.url} serves {info.model} (fingerprint "
            f"{info.fingerprint}), but this cache/checkpoint was made with fingerprint "
            f"{expected}: serve that model, or start a new run"
        )
    teacher.expected_fingerprint = expected
    return info


def name_fingerprint(api: str, name: str) -> str:
    """What stands for a fingerprint where the server reports only its model's name (vLLM,
    SGLang, mlx_lm): it tells two names apart, not two sets of weights under one name."""
    return f"{api}:" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _chunks(n: int, lengths: list[int], max_tokens: int, max_rows: int) -> list[slice]:
    """Consecutive slices of at most max_rows sequences and (unless one alone is longer)
    max_tokens tokens: one request each."""
    out, start, tokens = [], 0, 0
    for i in range(n):
        if i > start and (tokens + lengths[i] > max_tokens or i - start >= max_rows):
            out.append(slice(start, i))
            start, tokens = i, 0
        tokens += lengths[i]
    if start < n:
        out.append(slice(start, n))
    return out


# --- kd serve-teacher ---------------------------------------------------------------------


@dataclass
class KdTeacher(RemoteTeacher):
    """`kd serve-teacher`: any temperature, top-k up to the server's max_top_k, text input
    (the server tokenizes: cross-tokenizer pairs) and generate. `logprob_dtype` float16 is
    what the offline cache keeps (half the bytes); float32 for the exact values."""

    logprob_dtype: str = "float16"
    request_tokens: int = 65536  # tokens per request: big batches split into several
    request_rows: int = 256
    api = "kd"

    def info(self) -> InfoReply:
        try:
            self._info = InfoReply.from_json(self.http.request("GET", "/v1/info"))
        except ProtocolError as e:
            raise TeacherRefused(f"kd teacher at {self.http.url}: {e}") from None
        return self._info

    @property
    def max_top_k(self) -> int:
        return (self._info or self.info()).max_top_k

    def targets(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Targets:
        check_prompt_lens(sequences, prompt_lens)
        out = Targets([], [], [], [])
        lengths = [len(s) for s in sequences]
        for sl in _chunks(len(sequences), lengths, self.request_tokens, self.request_rows):
            req = ScoreRequest(
                temperature,
                top_k,
                list(sequences[sl]),
                list(prompt_lens[sl]),
                logprob_dtype=self.logprob_dtype,
            )
            reply = self._post("/v1/score", req.to_json())
            _extend(out, reply.targets)
        return out

    def score_texts(
        self, items: list[TextItem], temperature: float, top_k: int
    ) -> tuple[list[np.ndarray], list[int], Targets]:
        """Targets on texts the teacher tokenizes (cross-tokenizer pairs): the teacher-id
        sequences it read, their prompt lengths, and the targets on them."""
        req = ScoreRequest(temperature, top_k, texts=items, logprob_dtype=self.logprob_dtype)
        reply = self._post("/v1/score", req.to_json())
        return reply.sequences or [], reply.prompt_lens or [], reply.targets  # type: ignore[return-value]

    def generate(self, prompts: list[str], **settings: Any) -> Generated:
        """The teacher pass on the server: settings are GenerateRequest's fields
        (max_tokens, teacher_temperature, seed, max_seq_length, temperature, top_k,
        with_targets). Same request, same answers (seeded)."""
        req = GenerateRequest(prompts, logprob_dtype=self.logprob_dtype, **settings)
        r = self._post("/v1/generate", req.to_json())
        seqs, plens = r.sequences or [], r.prompt_lens or []
        responses = [s[p:] for s, p in zip(seqs, plens, strict=True)]
        return Generated(
            responses, plens, seqs, r.targets, r.fingerprint, r.prompt_cut, r.texts, r.char_ends
        )

    def _post(self, path: str, body: dict[str, Any]) -> TargetsReply:
        try:
            reply = TargetsReply.from_json(self.http.request("POST", path, body))
        except ProtocolError as e:
            raise TeacherRefused(f"kd teacher at {self.http.url}: {path}: {e}") from None
        self.check(reply.fingerprint)
        return reply


def _extend(out: Targets, more: Targets | None) -> None:
    if more is None:
        raise TeacherRefused("kd teacher: a score reply without targets")
    out.ids += more.ids
    out.logprobs += more.logprobs
    out.chosen += more.chosen
    out.tail += more.tail


def _refuse_temperature(api: str, url: str, temperature: float) -> None:
    if temperature != 1.0:
        raise TeacherUnsupported(
            f"temperature: {temperature:g} cannot be served by the {api} teacher at {url}: it "
            "returns log-probs at T = 1 only, and a top-k at T = 1 does not give one at "
            'another T; set temperature = 1 or use teacher_api = "kd"'
        )


def _topk_rows(pairs: list[tuple[int, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely (id, log-prob) pairs, descending; padded with id 0 and -inf (the
    loss's padding) when the server gave fewer."""
    pairs = sorted(pairs, key=lambda p: -p[1])[:k]
    ids = np.zeros(k, np.int32)
    lps = np.full(k, -np.inf, np.float32)
    for j, (tid, lp) in enumerate(pairs):
        ids[j], lps[j] = tid, lp
    return ids, lps


def _assemble(rows: list[tuple[np.ndarray, np.ndarray, float]], k: int) -> tuple[Any, ...]:
    ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, k), np.int32)
    lps = np.stack([r[1] for r in rows]) if rows else np.zeros((0, k), np.float32)
    chosen = np.array([r[2] for r in rows], np.float32)
    return ids, lps, chosen


# --- vLLM ---------------------------------------------------------------------------------


@dataclass
class VllmTeacher(RemoteTeacher):
    """vLLM's OpenAI server: prompt_logprobs on token-id prompts (/v1/completions). Start it
    with --max-logprobs >= top_k and pass that here as `max_logprobs`."""

    model: str | None = None  # the served model's name (default: the first of /v1/models)
    max_logprobs: int = VLLM_MAX_LOGPROBS
    request_rows: int = 32
    api = "vllm"

    def info(self) -> InfoReply:
        body = self.http.request("GET", "/v1/models")
        try:
            card = body["data"][0]
            name = str(card["id"])
        except (KeyError, IndexError, TypeError):
            raise TeacherRefused(
                f"vllm teacher at {self.http.url}: /v1/models lists no model"
            ) from None
        self.model = self.model or name
        self._info = InfoReply(
            name,
            name_fingerprint("vllm", name),
            "",
            0,
            "",
            self.max_logprobs,
            api="vllm",
            extra={"max_model_len": card.get("max_model_len")},
        )
        return self._info

    @property
    def max_top_k(self) -> int:
        return self.max_logprobs

    def targets(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Targets:
        _refuse_temperature("vllm", self.http.url, temperature)
        self._check_k(top_k)
        check_prompt_lens(sequences, prompt_lens)
        if self.model is None:
            self.info()
        out = Targets([], [], [], [])
        lengths = [len(s) for s in sequences]
        for sl in _chunks(len(sequences), lengths, 1 << 30, self.request_rows):
            body = {
                "model": self.model,
                "prompt": [[int(t) for t in s] for s in sequences[sl]],
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": top_k,
            }
            reply = self.http.request("POST", "/v1/completions", body)
            choices = parse_vllm_choices(reply, len(sequences[sl]))
            for s, p, choice in zip(sequences[sl], prompt_lens[sl], choices, strict=True):
                ids, lps, chosen = parse_vllm_prompt_logprobs(
                    choice.get("prompt_logprobs"), s, p, top_k
                )
                _extend(out, Targets([ids], [lps], [chosen], [tail_logmass(lps)]))
        return out


def parse_vllm_choices(reply: Any, n: int) -> list[dict[str, Any]]:
    """The `choices` of a /v1/completions reply in prompt order (one per prompt, n = 1)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise TeacherRefused(f"vllm: expected {n} choices in the reply, got {got}")
    return sorted(choices, key=lambda c: c.get("index", 0))


def parse_vllm_prompt_logprobs(
    entries: Any, seq: np.ndarray, prompt_len: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM's prompt_logprobs: one entry per prompt token, the first null; entry i maps
    str(token id) -> {"logprob", "rank", "decoded_token"} for the top-k of the distribution
    that predicts token i, plus token i itself (outside the top-k it adds a (k+1)th entry,
    whose log-prob is below the k-th). Values at -inf come as -9999.0."""
    if not isinstance(entries, list) or len(entries) != len(seq):
        got = len(entries) if isinstance(entries, list) else "no"
        raise TeacherRefused(
            f"vllm: prompt_logprobs has {got} entries for a prompt of {len(seq)} tokens "
            "(is prefix caching hiding them? start vLLM with --no-enable-prefix-caching)"
        )
    rows = []
    for pos in range(prompt_len, len(seq)):
        entry = entries[pos]
        if not isinstance(entry, dict):
            raise TeacherRefused(f"vllm: prompt_logprobs[{pos}] is not an object")
        try:
            pairs = [(int(tid), float(v["logprob"])) for tid, v in entry.items()]
            chosen = float(entry[str(int(seq[pos]))]["logprob"])
        except (KeyError, TypeError, ValueError):
            raise TeacherRefused(
                f"vllm: prompt_logprobs[{pos}] lacks the prompt's token {int(seq[pos])}"
            ) from None
        rows.append((*_topk_rows(pairs, k), chosen))
    return _assemble(rows, k)


# --- SGLang -------------------------------------------------------------------------------


@dataclass
class SglangTeacher(RemoteTeacher):
    """SGLang's native /generate with input log-probs (token ids in)."""

    max_logprobs: int = MAX_TOP_K  # SGLang has no fixed cap; kd keeps its own
    request_rows: int = 32
    api = "sglang"

    def info(self) -> InfoReply:
        body = self.http.request("GET", "/get_model_info")
        name = body.get("model_path") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise TeacherRefused(
                f"sglang teacher at {self.http.url}: /get_model_info names no model"
            )
        self._info = InfoReply(
            name, name_fingerprint("sglang", name), "", 0, "", self.max_logprobs, api="sglang"
        )
        return self._info

    @property
    def max_top_k(self) -> int:
        return self.max_logprobs

    def targets(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Targets:
        _refuse_temperature("sglang", self.http.url, temperature)
        self._check_k(top_k)
        check_prompt_lens(sequences, prompt_lens)
        out = Targets([], [], [], [])
        lengths = [len(s) for s in sequences]
        for sl in _chunks(len(sequences), lengths, 1 << 30, self.request_rows):
            body = {
                "input_ids": [[int(t) for t in s] for s in sequences[sl]],
                "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                "return_logprob": True,
                "logprob_start_len": 0,
                "top_logprobs_num": top_k,
            }
            reply = self.http.request("POST", "/generate", body)
            items = reply if isinstance(reply, list) else [reply]
            if len(items) != len(sequences[sl]):
                raise TeacherRefused(
                    f"sglang: {len(items)} replies for {len(sequences[sl])} inputs"
                )
            for s, p, item in zip(sequences[sl], prompt_lens[sl], items, strict=True):
                meta = item.get("meta_info") if isinstance(item, dict) else None
                ids, lps, chosen = parse_sglang_meta(meta, s, p, top_k)
                _extend(out, Targets([ids], [lps], [chosen], [tail_logmass(lps)]))
        return out


def parse_sglang_meta(
    meta: Any, seq: np.ndarray, prompt_len: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SGLang's meta_info: input_token_logprobs [[logprob | null, token id, text | null]]
    and input_top_logprobs [null | [[logprob, token id, text | null]]], covering the last
    len(...) input tokens (from logprob_start_len; the first entry, with no prefix, null)."""
    if not isinstance(meta, dict):
        raise TeacherRefused("sglang: a reply without meta_info (was return_logprob honoured?)")
    toks, tops = meta.get("input_token_logprobs"), meta.get("input_top_logprobs")
    if not isinstance(toks, list) or not isinstance(tops, list) or len(toks) != len(tops):
        raise TeacherRefused(
            "sglang: meta_info lacks matching input_token_logprobs/input_top_logprobs"
        )
    offset = len(seq) - len(toks)
    if offset < 0 or offset > prompt_len:
        raise TeacherRefused(
            f"sglang: input log-probs cover tokens from {offset}, "
            f"the response starts at {prompt_len}"
        )
    rows = []
    for pos in range(prompt_len, len(seq)):
        tok, top = toks[pos - offset], tops[pos - offset]
        try:
            if int(tok[1]) != int(seq[pos]) or not isinstance(top, list):
                raise ValueError
            chosen = float(tok[0])
            pairs = [(int(t[1]), float(t[0])) for t in top]
        except (TypeError, ValueError, IndexError):
            raise TeacherRefused(
                f"sglang: input log-probs at token {pos} do not match the input"
            ) from None
        rows.append((*_topk_rows(pairs, k), chosen))
    return _assemble(rows, k)


# --- mlx_lm.server ------------------------------------------------------------------------


@dataclass
class MlxLmTeacher(RemoteTeacher):
    """mlx_lm.server: the offline pass only (answers it samples, with their top-k <= 11 at
    T = 1). Each answer costs two seeded requests (mlx_lm reports either the chosen tokens
    or the top-k, not both); the two must agree, else the server did not honour the seed."""

    model: str = "default_model"  # mlx_lm serves the model it was started with under this
    api = "mlx_lm"

    def info(self) -> InfoReply:
        try:
            body = self.http.request("GET", "/v1/models")
            name = str(body["data"][-1]["id"])  # the served local model comes last
        except (TeacherRefused, KeyError, IndexError, TypeError):
            # mlx_lm 0.32's /v1/models fails mid-reply when there is no Hugging Face cache
            # folder: the health check then tells that the server is up.
            self.http.request("GET", "/health")
            name = self.model
        self._info = InfoReply(
            name, name_fingerprint("mlx_lm", name), "", 0, "", MLX_LM_MAX_TOP_K, api="mlx_lm"
        )
        return self._info

    @property
    def max_top_k(self) -> int:
        return MLX_LM_MAX_TOP_K

    def targets(
        self, sequences: list[np.ndarray], prompt_lens: list[int], temperature: float, top_k: int
    ) -> Targets:
        raise TeacherUnsupported(
            f"mlx_lm teacher at {self.http.url} cannot score a given text: mlx_lm.server returns "
            "top log-probs only for tokens it generates itself, so it serves the offline pass "
            'only (not online, on-policy or given-text steps); use teacher_api = "kd" for those'
        )

    def generate(
        self,
        prompts: list[str],
        max_tokens: int = 128,
        teacher_temperature: float = 0.7,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = MLX_LM_MAX_TOP_K,
        tokenizer: Any = None,
        **unused: Any,
    ) -> Generated:
        """Answers to `prompts` (chat template on the server), prompt i seeded with seed + i,
        with their top-k at T = 1. With the teacher's `tokenizer` the prompts' ids are
        rendered here (kd's format_prompt) and checked against the server's prompt length,
        so `sequences` is filled."""
        _refuse_temperature("mlx_lm", self.http.url, temperature)
        self._check_k(top_k)
        responses, plens, rows = [], [], []
        for i, prompt in enumerate(prompts):
            base = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": teacher_temperature,
                "seed": seed + i,
                "stream": False,
            }
            chosen = self.http.request("POST", "/v1/chat/completions", {**base, "logprobs": True})
            top = self.http.request("POST", "/v1/chat/completions", {**base, "top_logprobs": top_k})
            toks, ids, lps, lp_chosen, n_prompt = parse_mlx_lm_pair(chosen, top, top_k)
            responses.append(toks)
            plens.append(n_prompt)
            rows.append((ids, lps, lp_chosen))
        targets = Targets(
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [tail_logmass(r[1]) for r in rows],
        )
        seqs = None if tokenizer is None else _with_prompts(tokenizer, prompts, responses, plens)
        fp = (self._info or self.info()).fingerprint
        return Generated(responses, plens, seqs, targets, fp)


def _content(reply: Any, what: str) -> tuple[list[Any], int]:
    try:
        content = reply["choices"][0]["logprobs"]["content"]
        n_prompt = int(reply["usage"]["prompt_tokens"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise TeacherRefused(f"mlx_lm: the reply carries no {what} (choices[0].logprobs)") from None
    if not isinstance(content, list):
        raise TeacherRefused(f"mlx_lm: choices[0].logprobs.content is not a list ({what})")
    return content, n_prompt


def parse_mlx_lm_pair(
    chosen_reply: Any, top_reply: Any, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Two mlx_lm chat replies to one seeded request: with `logprobs` (content[i] = {"id",
    "logprob"} of the token it chose) and with `top_logprobs` (content[i].top_logprobs = the
    top-k {"id", "token", "logprob"}, in no particular order). Returns the answer's token
    ids, [R, k] ids and log-probs (descending), [R] chosen log-probs, the prompt's length."""
    chosen, n_prompt = _content(chosen_reply, "chosen tokens")
    tops, n_prompt_b = _content(top_reply, "top log-probs")
    if len(chosen) != len(tops) or n_prompt != n_prompt_b:
        raise TeacherRefused(
            f"mlx_lm: the two seeded passes disagree ({len(chosen)} vs {len(tops)} tokens): "
            "the server did not honour the seed"
        )
    toks, lp_chosen, rows = [], [], []
    for i, (c, t) in enumerate(zip(chosen, tops, strict=True)):
        try:
            tid, lp = int(c["id"]), float(c["logprob"])
            pairs = [(int(e["id"]), float(e["logprob"])) for e in t["top_logprobs"]]
        except (KeyError, TypeError, ValueError):
            raise TeacherRefused(
                f"mlx_lm: token {i} of the answer lacks id/logprob/top_logprobs"
            ) from None
        same = dict(pairs).get(tid)
        if same is not None and abs(same - lp) > 1e-3:
            raise TeacherRefused(
                f"mlx_lm: the two seeded passes disagree at token {i}: the server did not "
                "honour the seed"
            )
        toks.append(tid)
        lp_chosen.append(lp)
        rows.append(_topk_rows(pairs, k))
    ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, k), np.int32)
    lps = np.stack([r[1] for r in rows]) if rows else np.zeros((0, k), np.float32)
    return np.array(toks, np.int32), ids, lps, np.array(lp_chosen, np.float32), n_prompt


def _with_prompts(
    tokenizer: Any, prompts: list[str], responses: list[np.ndarray], plens: list[int]
) -> list[np.ndarray]:
    from kd_core.generate import format_prompt

    seqs = []
    for i, (p, r, n) in enumerate(zip(prompts, responses, plens, strict=True)):
        ids = format_prompt(tokenizer, p)
        if len(ids) != n:
            raise TeacherRefused(
                f"mlx_lm: prompt {i} is {n} tokens on the server, {len(ids)} here: the server's "
                "chat template or tokenizer differs from the teacher's"
            )
        seqs.append(np.array(ids + [int(t) for t in r], np.int32))
    return seqs


def make_teacher(
    url: str, api: str = "kd", token: str | None = None, **options: Any
) -> RemoteTeacher:
    """The client for `teacher_api` = api ("kd", "vllm", "sglang", "mlx_lm")."""
    classes: dict[str, type[RemoteTeacher]] = {
        "kd": KdTeacher,
        "vllm": VllmTeacher,
        "sglang": SglangTeacher,
        "mlx_lm": MlxLmTeacher,
    }
    if api not in classes:
        allowed = ", ".join(repr(a) for a in TEACHER_APIS)
        raise ValueError(f"teacher_api: {api!r} is not allowed; use one of {allowed}")
    return classes[api](url, token, **options)
