"""The teacher cache: keys, files and the responses kept across a stop.

Two keys guard the cache:

- the generation key (the teacher's identity - weights and tokenizer -, prompts,
  teacher_temperature, max_tokens, seed, max_seq_length) names the responses;
- the targets key (generation key + T + top_k) names the soft targets.

A run with another T finds the responses under the same generation key and only redoes the
forward pass: targets made at one T are never used at another. Storage: ids as uint16 when
the teacher vocabulary fits (else uint32), log-probabilities as float16. Files are written
whole or not at all (kd_core/files/atomic.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.config import KDConfig
from kd_core.files.atomic import atomic_save_safetensors
from kd_core.models.identity import ModelIdentity
from kd_core.models.load import safetensors_header
from kd_core.vocab.plan import eos_ids
from kd_core.vocab.spans import decoded_ends

# 2: long prompts are cut from the front (the assistant marker stays). 3: the key holds the
# teacher's identity (weights and tokenizer); format-2 files were written under an empty one.
CACHE_FORMAT = 3


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def generation_key(teacher: ModelIdentity, prompts: list[str], cfg: KDConfig) -> str:
    """What the teacher's answers depend on: which teacher (its weights and its tokenizer, not
    its path), the prompts and the sampling settings."""
    return _sha(
        CACHE_FORMAT,
        teacher.weights,
        teacher.tokenizer,
        prompts,
        cfg.teacher_temperature,
        cfg.max_tokens,
        cfg.seed,
        cfg.max_seq_length,
    )


TARGETS_FORMAT = 2  # 2: chosen-token log-probs, response texts and character offsets


def targets_key(gen_key: str, cfg: KDConfig) -> str:
    return _sha(gen_key, cfg.temperature, cfg.top_k, TARGETS_FORMAT)


@dataclass
class TeacherOutputs:
    """Teacher-vocabulary sequences (prompt + response) and, offline, their soft targets."""

    sequences: list[np.ndarray]  # int32 teacher ids
    prompt_lens: list[int]
    topk_ids: list[np.ndarray] | None  # [R, k] teacher ids per example
    topk_logprobs: list[np.ndarray] | None  # [R, k] float32 log P_T
    teacher_vocab: int
    path: Path | None = None
    from_cache: bool = False
    prompt_cut: list[bool] | None = None  # per example: its prompt was cut to fit
    # With soft targets: log P_T of each response token the teacher chose, and the response's
    # text with the character each token ends at (kd_core.vocab.spans.decoded_ends): what a student
    # with another tokenizer needs (vocab_strategy "align"), so one cache serves any student.
    chosen_logprobs: list[np.ndarray] | None = None  # [R] float32
    texts: list[str] | None = None
    char_ends: list[np.ndarray] | None = None  # [R] int32 (an ending EOS: len(text))

    @property
    def response_tokens(self) -> int:
        return int(sum(len(s) - p for s, p in zip(self.sequences, self.prompt_lens, strict=True)))

    def responses(self) -> list[np.ndarray]:
        return [s[p:] for s, p in zip(self.sequences, self.prompt_lens, strict=True)]


class CacheError(ValueError):
    pass


def pack_sequences(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
    return flat, offsets


def save_outputs(path: Path, out: TeacherOutputs, meta: dict[str, Any]) -> None:
    flat, offsets = pack_sequences(out.sequences)
    arrays: dict[str, Any] = {
        "tokens": mx.array(flat),
        "offsets": mx.array(offsets.astype(np.int64)),
        "prompt_lens": mx.array(np.array(out.prompt_lens, np.int32)),
    }
    if out.prompt_cut is not None:
        arrays["prompt_cut"] = mx.array(np.array(out.prompt_cut, np.uint8))
    if out.topk_ids is not None:
        id_dtype = np.uint16 if out.teacher_vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
        arrays["topk_ids"] = mx.array(np.concatenate(out.topk_ids).astype(id_dtype))
        arrays["topk_logprobs"] = mx.array(np.concatenate(out.topk_logprobs).astype(np.float16))
    if out.chosen_logprobs is not None and out.texts is not None and out.char_ends is not None:
        arrays["chosen_logprobs"] = mx.array(np.concatenate(out.chosen_logprobs).astype(np.float32))
        arrays["char_ends"] = mx.array(np.concatenate(out.char_ends).astype(np.int32))
        text_flat, text_offsets = pack_sequences(
            [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) for t in out.texts]
        )
        arrays["text_bytes"] = mx.array(text_flat.astype(np.uint8))
        arrays["text_offsets"] = mx.array(text_offsets)
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata["teacher_vocab"] = str(out.teacher_vocab)
    metadata["cache_format"] = str(CACHE_FORMAT)
    atomic_save_safetensors(path, arrays, metadata)


def load_outputs(path: Path, expect: dict[str, Any], with_targets: bool) -> TeacherOutputs:
    """Read a cache file; CacheError if it is damaged or was made for something else."""
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
        got = {k: json.loads(metadata[k]) for k in expect}
        teacher_vocab = int(metadata["teacher_vocab"])
        flat = np.array(arrays["tokens"])
        offsets = np.array(arrays["offsets"])
        prompt_lens = [int(x) for x in np.array(arrays["prompt_lens"])]
        cut = [bool(x) for x in np.array(arrays["prompt_cut"])] if "prompt_cut" in arrays else None
    except Exception as e:
        raise CacheError(f"teacher cache {path.name} is damaged ({e.__class__.__name__})") from None
    if got != expect:
        raise CacheError(f"teacher cache {path.name} was made with other settings")
    n = len(prompt_lens)
    if offsets.shape != (n + 1,) or offsets[-1] != flat.shape[0]:
        raise CacheError(f"teacher cache {path.name} is damaged (inconsistent lengths)")
    seqs = [flat[offsets[i] : offsets[i + 1]] for i in range(n)]
    ids = lps = None
    if with_targets:
        if "topk_ids" not in arrays:
            raise CacheError(f"teacher cache {path.name} holds no soft targets")
        all_ids = np.array(arrays["topk_ids"]).astype(np.int32)
        all_lp = np.array(arrays["topk_logprobs"].astype(mx.float32))
        resp = [len(s) - p for s, p in zip(seqs, prompt_lens, strict=True)]
        if all_ids.shape[0] != sum(resp) or not np.all(np.isfinite(all_lp)):
            raise CacheError(f"teacher cache {path.name} is damaged (targets)")
        bounds = np.concatenate([[0], np.cumsum(resp)])
        ids = [all_ids[bounds[i] : bounds[i + 1]] for i in range(n)]
        lps = [all_lp[bounds[i] : bounds[i + 1]] for i in range(n)]
    out = TeacherOutputs(seqs, prompt_lens, ids, lps, teacher_vocab, path, True, cut)
    if with_targets and "chosen_logprobs" in arrays:
        _load_texts(out, arrays, bounds, path)
    return out


def read_or_discard(
    path: Path,
    expect: dict[str, Any],
    with_targets: bool,
    warn: Callable[[str], None] | None = None,
    check: Callable[[TeacherOutputs], None] | None = None,
) -> TeacherOutputs | None:
    """The cache file at `path` when it holds what `expect` names (and passes `check`, which
    raises CacheError otherwise); a damaged or stale file is deleted, said through `warn`,
    and None returned: the caller rebuilds it. Never a file trusted on its name alone."""
    if not path.exists():
        return None
    try:
        out = load_outputs(path, expect, with_targets)
        if check is not None:
            check(out)
        return out
    except CacheError as e:
        if warn:
            warn(f"{e}; rebuilding")
        path.unlink(missing_ok=True)
        return None


def _load_texts(out: TeacherOutputs, arrays: dict[str, Any], bounds: Any, path: Path) -> None:
    n = len(out.sequences)
    try:
        chosen = np.array(arrays["chosen_logprobs"]).astype(np.float32)
        ends = np.array(arrays["char_ends"]).astype(np.int32)
        flat = np.array(arrays["text_bytes"]).astype(np.uint8)
        t_off = np.array(arrays["text_offsets"]).astype(np.int64)
        texts = [flat[t_off[i] : t_off[i + 1]].tobytes().decode("utf-8") for i in range(n)]
    except Exception as e:
        raise CacheError(f"teacher cache {path.name} is damaged ({e.__class__.__name__})") from None
    if chosen.shape[0] != bounds[-1] or ends.shape[0] != bounds[-1]:
        raise CacheError(f"teacher cache {path.name} is damaged (texts)")
    out.chosen_logprobs = [chosen[bounds[i] : bounds[i + 1]] for i in range(n)]
    out.char_ends = [ends[bounds[i] : bounds[i + 1]] for i in range(n)]
    out.texts = texts


def response_texts(
    tokenizer: Any, sequences: list[np.ndarray], prompt_lens: list[int]
) -> tuple[list[str], list[np.ndarray]]:
    """Each response's text (less an ending EOS) and the character each token ends at."""
    eos = set(eos_ids(tokenizer))
    texts, ends = [], []
    for seq, plen in zip(sequences, prompt_lens, strict=True):
        resp = [int(t) for t in seq[plen:]]
        body = resp[:-1] if resp and resp[-1] in eos else resp
        text, e = decoded_ends(tokenizer, body) if body else ("", [])
        texts.append(text)
        ends.append(np.array(e + [len(text)] * (len(resp) - len(body)), np.int32))
    return texts, ends


def save_partial(path: Path, key: str, done: dict[int, tuple[np.ndarray, int]]) -> None:
    """Responses finished before a stop: prompt index, sequence, prompt length."""
    index = sorted(done)
    flat, offsets = pack_sequences([done[i][0] for i in index])
    arrays = {
        "index": mx.array(np.array(index, np.int32)),
        "tokens": mx.array(flat),
        "offsets": mx.array(offsets),
        "prompt_lens": mx.array(np.array([done[i][1] for i in index], np.int32)),
    }
    atomic_save_safetensors(
        path, arrays, {"key": json.dumps(key), "cache_format": str(CACHE_FORMAT)}
    )


def load_partial(path: Path, key: str) -> dict[int, tuple[np.ndarray, int]]:
    """What save_partial kept, or nothing when the file is missing, damaged or stale."""
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        if json.loads(meta["key"]) != key:
            return {}
        index = [int(i) for i in np.array(arrays["index"])]
        flat, offsets = np.array(arrays["tokens"]), np.array(arrays["offsets"])
        plens = [int(x) for x in np.array(arrays["prompt_lens"])]
        return {i: (flat[offsets[j] : offsets[j + 1]], plens[j]) for j, i in enumerate(index)}
    except Exception:
        return {}


def sweep_stale_cache(cache_dir: Path) -> tuple[int, int]:
    """Delete teacher-cache files of an older CACHE_FORMAT: (files, bytes) removed.

    Their keys can never match again (the format is part of every key), and format-2 files
    were keyed without the teacher's identity, so no run may read them: a cache is rebuilt
    from the teacher, never trusted on its name alone."""
    removed = size = 0
    folder = cache_dir / "teacher"
    if not folder.is_dir():
        return 0, 0
    for path in folder.glob("*.safetensors"):
        try:
            meta = safetensors_header(path).get("__metadata__") or {}
            if int(meta.get("cache_format", "0")) >= CACHE_FORMAT:
                continue
            nbytes = path.stat().st_size
            path.unlink()
        except (OSError, ValueError):
            continue  # unreadable or vanished: lookup() rebuilds damaged files itself
        removed, size = removed + 1, size + nbytes
    return removed, size
