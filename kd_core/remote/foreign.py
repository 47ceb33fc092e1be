"""Clients for the servers users already run: vLLM and SGLang (given-text scoring at T = 1,
top-k up to their cap, the rest the tail bucket) and mlx_lm.server (the offline pass only).
What each can and cannot serve: kd_core/remote/clients.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kd_core.generate import format_prompt
from kd_core.remote.clients import (
    Generated,
    RemoteTeacher,
    assemble_rows,
    extend_targets,
    name_fingerprint,
    refuse_temperature,
    request_slices,
    topk_rows,
)
from kd_core.remote.protocol import (
    MAX_TOP_K,
    InfoReply,
    Targets,
    check_prompt_lens,
    tail_logmass,
)
from kd_core.remote.transport import TeacherRefused, TeacherUnsupported

VLLM_MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MLX_LM_MAX_TOP_K = 11  # mlx_lm.server's top_logprobs limit


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
        refuse_temperature("vllm", self.http.url, temperature)
        self._check_k(top_k)
        check_prompt_lens(sequences, prompt_lens)
        if self.model is None:
            self.info()
        out = Targets([], [], [], [])
        lengths = [len(s) for s in sequences]
        for sl in request_slices(len(sequences), lengths, 1 << 30, self.request_rows):
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
                extend_targets(out, Targets([ids], [lps], [chosen], [tail_logmass(lps)]))
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
        rows.append((*topk_rows(pairs, k), chosen))
    return assemble_rows(rows, k)


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
        refuse_temperature("sglang", self.http.url, temperature)
        self._check_k(top_k)
        check_prompt_lens(sequences, prompt_lens)
        out = Targets([], [], [], [])
        lengths = [len(s) for s in sequences]
        for sl in request_slices(len(sequences), lengths, 1 << 30, self.request_rows):
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
                extend_targets(out, Targets([ids], [lps], [chosen], [tail_logmass(lps)]))
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
        rows.append((*topk_rows(pairs, k), chosen))
    return assemble_rows(rows, k)


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
        refuse_temperature("mlx_lm", self.http.url, temperature)
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
            wait = self.policy.generate_timeout_s  # one answer, decoded by a big teacher
            chosen = self.http.request(
                "POST", "/v1/chat/completions", {**base, "logprobs": True}, wait
            )
            top = self.http.request(
                "POST", "/v1/chat/completions", {**base, "top_logprobs": top_k}, wait
            )
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
        rows.append(topk_rows(pairs, k))
    ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, k), np.int32)
    lps = np.stack([r[1] for r in rows]) if rows else np.zeros((0, k), np.float32)
    return np.array(toks, np.int32), ids, lps, np.array(lp_chosen, np.float32), n_prompt


def _with_prompts(
    tokenizer: Any, prompts: list[str], responses: list[np.ndarray], plens: list[int]
) -> list[np.ndarray]:
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
