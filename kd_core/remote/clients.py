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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kd_core.remote.protocol import (
    GenerateRequest,
    InfoReply,
    ProtocolError,
    ScoreRequest,
    Targets,
    TargetsReply,
    TextItem,
    check_prompt_lens,
    decode_tokenizer,
)
from kd_core.remote.transport import (
    FingerprintMismatch,
    HttpJson,
    RetryPolicy,
    TeacherRefused,
    TeacherUnsupported,
)

TEACHER_APIS = ("kd", "vllm", "sglang", "mlx_lm")

Scored = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]


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

    def tokenizer_files(self) -> dict[str, bytes]:
        raise TeacherUnsupported(
            f"{self.api} teacher at {self.http.url} does not send its tokenizer; "
            "name the served model's tokenizer folder in teacher_tokenizer"
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


def request_slices(n: int, lengths: list[int], max_tokens: int, max_rows: int) -> list[slice]:
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
        for sl in request_slices(len(sequences), lengths, self.request_tokens, self.request_rows):
            req = ScoreRequest(
                temperature,
                top_k,
                list(sequences[sl]),
                list(prompt_lens[sl]),
                logprob_dtype=self.logprob_dtype,
            )
            reply = self._post("/v1/score", req.to_json())
            extend_targets(out, reply.targets)
        return out

    def score_texts(
        self, items: list[TextItem], temperature: float, top_k: int
    ) -> tuple[list[np.ndarray], list[int], Targets]:
        """Targets on texts the teacher tokenizes (cross-tokenizer pairs): the teacher-id
        sequences it read, their prompt lengths, and the targets on them."""
        req = ScoreRequest(temperature, top_k, texts=items, logprob_dtype=self.logprob_dtype)
        reply = self._post("/v1/score", req.to_json())
        return reply.sequences or [], reply.prompt_lens or [], reply.targets  # type: ignore[return-value]

    def generate(self, prompts: list[str], tokenizer: Any = None, **settings: Any) -> Generated:
        """The teacher pass on the server: settings are GenerateRequest's fields
        (max_tokens, teacher_temperature, seed, max_seq_length, temperature, top_k,
        with_targets). Same request, same answers (seeded). The server renders the prompts
        itself: `tokenizer` is not needed."""
        req = GenerateRequest(prompts, logprob_dtype=self.logprob_dtype, **settings)
        r = self._post("/v1/generate", req.to_json(), self.policy.generate_timeout_s)
        seqs, plens = r.sequences or [], r.prompt_lens or []
        responses = [s[p:] for s, p in zip(seqs, plens, strict=True)]
        return Generated(
            responses, plens, seqs, r.targets, r.fingerprint, r.prompt_cut, r.texts, r.char_ends
        )

    def tokenizer_files(self) -> dict[str, bytes]:
        """The teacher's tokenizer files as the server holds them (GET /v1/tokenizer)."""
        try:
            return decode_tokenizer(self.http.request("GET", "/v1/tokenizer"))
        except ProtocolError as e:
            raise TeacherRefused(f"kd teacher at {self.http.url}: {e}") from None

    def _post(
        self, path: str, body: dict[str, Any], read_timeout_s: float | None = None
    ) -> TargetsReply:
        try:
            reply = TargetsReply.from_json(self.http.request("POST", path, body, read_timeout_s))
        except ProtocolError as e:
            raise TeacherRefused(f"kd teacher at {self.http.url}: {path}: {e}") from None
        self.check(reply.fingerprint)
        return reply


def extend_targets(out: Targets, more: Targets | None) -> None:
    if more is None:
        raise TeacherRefused("kd teacher: a score reply without targets")
    out.ids += more.ids
    out.logprobs += more.logprobs
    out.chosen += more.chosen
    out.tail += more.tail


def refuse_temperature(api: str, url: str, temperature: float) -> None:
    if temperature != 1.0:
        raise TeacherUnsupported(
            f"temperature: {temperature:g} cannot be served by the {api} teacher at {url}: it "
            "returns log-probs at T = 1 only, and a top-k at T = 1 does not give one at "
            'another T; set temperature = 1 or use teacher_api = "kd"'
        )


def topk_rows(pairs: list[tuple[int, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely (id, log-prob) pairs, descending; padded with id 0 and -inf (the
    loss's padding) when the server gave fewer."""
    pairs = sorted(pairs, key=lambda p: -p[1])[:k]
    ids = np.zeros(k, np.int32)
    lps = np.full(k, -np.inf, np.float32)
    for j, (tid, lp) in enumerate(pairs):
        ids[j], lps[j] = tid, lp
    return ids, lps


def assemble_rows(rows: list[tuple[np.ndarray, np.ndarray, float]], k: int) -> tuple[Any, ...]:
    ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, k), np.int32)
    lps = np.stack([r[1] for r in rows]) if rows else np.zeros((0, k), np.float32)
    chosen = np.array([r[2] for r in rows], np.float32)
    return ids, lps, chosen
