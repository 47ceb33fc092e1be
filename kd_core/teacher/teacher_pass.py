"""The teacher pass: responses and soft targets, cached in safetensors.

For every prompt the teacher samples a response (teacher_temperature, max_tokens; batched
through mlx-lm's batch_generate), then one teacher-forced forward over prompt + response
gives its distribution at every response position. We store the top-k ids and their
log P_T softened at the *loss* temperature T over the full vocabulary; the tail mass is
1 - sum(exp(...)). Two keys guard the cache:

- the generation key (teacher weights, prompts, teacher_temperature, max_tokens, seed,
  max_seq_length) names the responses;
- the targets key (generation key + T + top_k) names the soft targets.

A run with another T finds the responses under the same generation key and only redoes the
forward pass: targets made at one T are never used at another. Storage: ids as uint16 when
the teacher vocabulary fits (else uint32), log-probabilities as float16.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.config import KDConfig
from kd_core.examples.batch import format_prompt, forward_inputs
from kd_core.files.atomic import atomic_save_safetensors
from kd_core.losses.core import log_softmax, topk_of
from kd_core.models.identity import ModelIdentity
from kd_core.models.load import safetensors_header, vocab_size
from kd_core.runtime.cpu_streams import StreamSet, row_slices, stream_count
from kd_core.vocab.plan import eos_ids

# 2: long prompts are cut from the front (the assistant marker stays). 3: the key holds the
# teacher's identity (weights and tokenizer); format-2 files were written under an empty one.
CACHE_FORMAT = 3
# Sequences decoded together. Decoding reads every weight once per step whatever the batch,
# so bigger batches are much cheaper per token (measured, 8 x 768 teacher on 2 CPU cores:
# 50 prompts x 128 tokens in 35.7 s as batches of 16, 22.3 s as one batch) - as many as the
# KV-cache budget allows, up to GEN_MAX_BATCH.
GEN_MAX_BATCH = 64
GEN_KV_BUDGET = 2 * 2**30  # bytes of KV cache the generation batch may hold
FWD_CHUNK = 8  # sequences per teacher forward when extracting targets

ProgressFn = Callable[[int, int, str], None]


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


def _pack(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
    return flat, offsets


def save_outputs(path: Path, out: TeacherOutputs, meta: dict[str, Any]) -> None:
    flat, offsets = _pack(out.sequences)
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
        text_flat, text_offsets = _pack(
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
    from kd_core.vocab.spans import decoded_ends

    eos = set(eos_ids(tokenizer))
    texts, ends = [], []
    for seq, plen in zip(sequences, prompt_lens, strict=True):
        resp = [int(t) for t in seq[plen:]]
        body = resp[:-1] if resp and resp[-1] in eos else resp
        text, e = decoded_ends(tokenizer, body) if body else ("", [])
        texts.append(text)
        ends.append(np.array(e + [len(text)] * (len(resp) - len(body)), np.int32))
    return texts, ends


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes one token costs this model (0 if its caches do not say)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([[0]], dtype=mx.int32), cache=cache)
    total = 0.0
    for c in cache:
        for a in (getattr(c, "keys", None), getattr(c, "values", None)):
            if isinstance(a, mx.array) and a.ndim >= 3 and a.shape[2]:
                total += a.nbytes / a.shape[2]  # caches allocate ahead in steps of tokens
    return int(total)


def generation_batch(model: Any, longest: int) -> int:
    """Sequences to decode at once: GEN_MAX_BATCH, or fewer if their KV cache would pass
    GEN_KV_BUDGET (16 when the model's cache size cannot be read)."""
    per_token = kv_bytes_per_token(model)
    if per_token <= 0:
        return 16
    return max(1, min(GEN_MAX_BATCH, GEN_KV_BUDGET // (per_token * max(1, longest))))


def prompt_budget(cfg: KDConfig) -> int:
    """Most prompt tokens a sequence keeps: the rest of max_seq_length is room for the
    response (max_tokens, but never less than half of max_seq_length)."""
    return max(1, cfg.max_seq_length - min(cfg.max_tokens, cfg.max_seq_length // 2))


def fit_prompt(ids: list[int], budget: int) -> tuple[list[int], bool]:
    """Cut a prompt from the front to `budget` tokens: a chat template puts the assistant
    marker at the end, and the model must see it to answer."""
    return (ids[-budget:], True) if len(ids) > budget else (ids, False)


def fitted_prompts(
    tokenizer: Any, prompts: list[str], cfg: KDConfig
) -> list[tuple[list[int], bool]]:
    """Each prompt's token ids as the teacher reads them, and whether it was cut to fit."""
    return [fit_prompt(format_prompt(tokenizer, p), prompt_budget(cfg)) for p in prompts]


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    cfg: KDConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    fitted: list[tuple[list[int], bool]] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Sample one response per prompt; sequences include the EOS when the teacher stopped.
    `fitted`: the prompts' `fitted_prompts`, when the caller has them already.
    Returns (sequences, prompt lengths). Seeded by cfg.seed; see `sample_batch`."""
    mx.random.seed(cfg.seed)
    eos = eos_ids(tokenizer)
    if fitted is None:
        fitted = fitted_prompts(tokenizer, prompts, cfg)
    prompt_ids = [ids for ids, _ in fitted]
    if not prompt_ids:
        return [], []
    budgets = [max(1, min(cfg.max_tokens, cfg.max_seq_length - len(p))) for p in prompt_ids]
    responses = sample_batch(
        model, prompt_ids, budgets, eos, cfg.teacher_temperature, progress, should_stop
    )
    seqs = [np.array(p + r, np.int32) for p, r in zip(prompt_ids, responses, strict=True)]
    return seqs, [len(p) for p in prompt_ids]


def sample_batch(
    model: Any,
    prompt_ids: list[list[int]],
    budgets: list[int],
    eos: list[int],
    temperature: float,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """One sampled response per prompt (at most its budget of tokens; ending in eos[0] when
    the model stopped, so that a student learns to stop), from the global MLX random state.

    mlx-lm's BatchGenerator (what its batch_generate drives), fed every prompt at once so
    finished sequences are replaced by waiting ones, with progress as sequences finish.
    `should_stop` is polled between decoding steps: when it says stop, GenerationStopped
    carries the responses finished so far. The teacher pass and on-policy steps use it."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    batch = batch_size or generation_batch(
        model, max(len(p) + b for p, b in zip(prompt_ids, budgets, strict=True))
    )
    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in eos],
        sampler=make_sampler(temp=temperature),
        completion_batch_size=batch,
        prefill_batch_size=min(batch, 16),
    )
    uids = gen.insert(prompt_ids, budgets)
    tokens: dict[int, list[int]] = {u: [] for u in uids}
    last = time.monotonic()
    finished: set[int] = set()
    try:
        while responses := gen.next_generated():
            for r in responses:
                if r.finish_reason != "stop":  # "stop": the EOS, appended below
                    tokens[r.uid].append(int(r.token))
                if r.finish_reason is not None:
                    finished.add(r.uid)
            if progress and (len(finished) == len(uids) or time.monotonic() - last > 0.5):
                progress(len(finished), len(uids), "generating")
                last = time.monotonic()
            if should_stop is not None and should_stop():
                done = {
                    i: _sequence(p, tokens[u], b, eos[0])
                    for i, (p, u, b) in enumerate(zip(prompt_ids, uids, budgets, strict=True))
                    if u in finished
                }
                raise GenerationStopped(len(finished), len(uids), done)
    finally:
        gen.close()
    out = [
        _response(tokens[uid], budget, eos[0]) for uid, budget in zip(uids, budgets, strict=True)
    ]
    if progress:
        progress(len(uids), len(uids), "generating")
    return out


def _response(toks: list[int], budget: int, eos: int) -> list[int]:
    toks = toks[:budget]
    if len(toks) < budget:  # stopped on EOS: keep it so the student learns to stop
        toks = [*toks, eos]
    return toks


def _sequence(prompt: list[int], toks: list[int], budget: int, eos: int) -> np.ndarray:
    return np.array(prompt + _response(toks, budget, eos), np.int32)


class GenerationStopped(Exception):
    """A stop was asked during the teacher pass. `finished` holds the responses done so far
    (prompt index -> sequence): TeacherPass keeps them, so the next run generates the rest."""

    def __init__(self, done: int, total: int, finished: dict[int, np.ndarray] | None = None):
        super().__init__(f"stopped during the teacher pass ({done} of {total} responses done)")
        self.done, self.total = done, total
        self.finished = finished or {}


def _save_partial(path: Path, key: str, done: dict[int, tuple[np.ndarray, int]]) -> None:
    """Responses finished before a stop: prompt index, sequence, prompt length."""
    index = sorted(done)
    flat, offsets = _pack([done[i][0] for i in index])
    arrays = {
        "index": mx.array(np.array(index, np.int32)),
        "tokens": mx.array(flat),
        "offsets": mx.array(offsets),
        "prompt_lens": mx.array(np.array([done[i][1] for i in index], np.int32)),
    }
    atomic_save_safetensors(
        path, arrays, {"key": json.dumps(key), "cache_format": str(CACHE_FORMAT)}
    )


def _load_partial(path: Path, key: str) -> dict[int, tuple[np.ndarray, int]]:
    """What _save_partial kept, or nothing when the file is missing, damaged or stale."""
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


def soft_targets(
    model: Any,
    sequences: list[np.ndarray],
    prompt_lens: list[int],
    cfg: KDConfig,
    progress: ProgressFn | None = None,
    streams: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Top-k ids and log P_T at every response position (teacher-forced forward), and the
    log P_T of the token the teacher chose there.

    With streams > 1 each forward's sequences are split over that many parallel streams
    (kd_core/runtime/cpu_streams.py: MLX's CPU element-wise ops use one thread per stream)."""
    ids_out: list[np.ndarray] = []
    lp_out: list[np.ndarray] = []
    chosen_out: list[np.ndarray] = []
    pool = StreamSet(streams)
    with pool.active():
        for start in range(0, len(sequences), FWD_CHUNK):
            chunk = sequences[start : start + FWD_CHUNK]
            parts = []
            for i, rows in enumerate(row_slices(len(chunk), pool.n)):
                with pool.on(i):  # each part padded to its own longest sequence
                    inputs = forward_inputs(chunk[rows])
                    log_p = log_softmax(model(mx.array(inputs)), cfg.temperature)
                    nxt = np.zeros_like(inputs)  # the token each position was followed by
                    for b, seq in enumerate(chunk[rows]):
                        nxt[b, : len(seq) - 1] = seq[1:]
                    picked = mx.take_along_axis(log_p, mx.array(nxt)[..., None], axis=-1)
                    parts.append((*topk_of(log_p, cfg.top_k), picked[..., 0]))
            mx.eval(parts)
            rows_out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            for ids, lps, ch in parts:
                rows_out += zip(np.array(ids), np.array(lps), np.array(ch), strict=True)
            for b, (s, (ids_b, lps_b, ch_b)) in enumerate(zip(chunk, rows_out, strict=True)):
                p0 = prompt_lens[start + b] - 1
                r = len(s) - prompt_lens[start + b]
                ids_out.append(ids_b[p0 : p0 + r].astype(np.int32))
                lp_out.append(lps_b[p0 : p0 + r].astype(np.float32))
                chosen_out.append(ch_b[p0 : p0 + r].astype(np.float32))
            if progress:
                progress(min(start + FWD_CHUNK, len(sequences)), len(sequences), "soft targets")
            if should_stop is not None and should_stop() and start + FWD_CHUNK < len(sequences):
                raise GenerationStopped(start + FWD_CHUNK, len(sequences))
    return ids_out, lp_out, chosen_out


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


@dataclass
class TeacherPass:
    """Cache-aware teacher pass for one domain. `load_teacher` is called only on a miss."""

    cache_dir: Path
    teacher: ModelIdentity
    cfg: KDConfig

    def paths(self, domain: str, prompts: list[str]) -> tuple[str, str, Path, Path]:
        gkey = generation_key(self.teacher, prompts, self.cfg)
        tkey = targets_key(gkey, self.cfg)
        d = self.cache_dir / "teacher"
        gpath, tpath = d / f"{domain}-gen-{gkey}.safetensors", d / f"{domain}-{tkey}.safetensors"
        return gkey, tkey, gpath, tpath

    def lookup(
        self,
        domain: str,
        prompts: list[str],
        with_targets: bool,
        warn: Callable[[str], None] | None = None,
    ) -> TeacherOutputs | None:
        gkey, tkey, gpath, tpath = self.paths(domain, prompts)
        for path, key, targets in ((tpath, tkey, True), (gpath, gkey, False)):
            if targets is False and with_targets:
                continue
            if path.exists():
                try:
                    return load_outputs(path, {"key": key}, targets)
                except CacheError as e:
                    if warn:
                        warn(f"{e}; rebuilding")
                    path.unlink(missing_ok=True)
        return None

    def run(
        self,
        domain: str,
        prompts: list[str],
        with_targets: bool,
        load_teacher: Callable[[], tuple[Any, Any]],
        progress: ProgressFn | None = None,
        warn: Callable[[str], None] | None = None,
        world: Any = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TeacherOutputs:
        hit = self.lookup(domain, prompts, with_targets, warn)
        if world is not None and world.distributed:
            return self._run_shared(
                domain, prompts, with_targets, load_teacher, progress, hit, world
            )
        if hit is not None:
            return hit
        gkey, tkey, gpath, tpath = self.paths(domain, prompts)
        model, tokenizer = load_teacher()
        vocab = vocab_size(model)
        seq_out = None
        if gpath.exists():
            try:
                seq_out = load_outputs(gpath, {"key": gkey}, False)
            except CacheError as e:
                if warn:
                    warn(f"{e}; rebuilding")
        if seq_out is None:
            fitted = fitted_prompts(tokenizer, prompts, self.cfg)  # tokenized once
            seqs, plens = self._generate(
                model, tokenizer, fitted, gkey, gpath, progress, should_stop
            )
            cut = [was_cut for _, was_cut in fitted]
            seq_out = TeacherOutputs(seqs, plens, None, None, vocab, prompt_cut=cut)
            save_outputs(gpath, seq_out, {"key": gkey})
            seq_out.path = gpath
        if not with_targets:
            return seq_out
        t0 = time.perf_counter()
        ids, lps, chosen = soft_targets(
            model,
            seq_out.sequences,
            seq_out.prompt_lens,
            self.cfg,
            progress,
            streams=stream_count(self.cfg.cpu_streams, FWD_CHUNK),
            should_stop=should_stop,
        )
        # Train on exactly what the cache holds (float16), so a run that built the cache and
        # a run that reads it see the same targets.
        lps = [lp.astype(np.float16).astype(np.float32) for lp in lps]
        texts, ends = response_texts(tokenizer, seq_out.sequences, seq_out.prompt_lens)
        out = TeacherOutputs(
            seq_out.sequences, seq_out.prompt_lens, ids, lps, vocab, prompt_cut=seq_out.prompt_cut
        )
        out.chosen_logprobs, out.texts, out.char_ends = chosen, texts, ends
        save_outputs(tpath, out, {"key": tkey, "seconds": round(time.perf_counter() - t0, 3)})
        out.path = tpath
        return out

    def _generate(
        self,
        model: Any,
        tokenizer: Any,
        fitted: list[tuple[list[int], bool]],
        gkey: str,
        gpath: Path,
        progress: ProgressFn | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[np.ndarray], list[int]]:
        """Responses to every prompt, resumable per prompt: responses finished before a stop
        are kept beside the cache (`.partial`), and the next run generates only the rest."""
        partial_path = gpath.with_name(gpath.name.replace(".safetensors", ".partial.safetensors"))
        done = _load_partial(partial_path, gkey)
        todo = [i for i in range(len(fitted)) if i not in done]
        try:
            seqs, plens = generate_responses(
                model, tokenizer, [], self.cfg, progress, should_stop, [fitted[i] for i in todo]
            )
        except GenerationStopped as e:
            for j, seq in e.finished.items():
                done[todo[j]] = (seq, len(fitted[todo[j]][0]))
            if done:
                _save_partial(partial_path, gkey, done)
            raise GenerationStopped(len(done), len(fitted)) from None
        for i, seq, plen in zip(todo, seqs, plens, strict=True):
            done[i] = (seq, plen)
        partial_path.unlink(missing_ok=True)
        return [done[i][0] for i in range(len(fitted))], [done[i][1] for i in range(len(fitted))]

    def _run_shared(
        self,
        domain: str,
        prompts: list[str],
        with_targets: bool,
        load_teacher: Callable[[], tuple[Any, Any]],
        progress: ProgressFn | None,
        hit: TeacherOutputs | None,
        world: Any,
    ) -> TeacherOutputs:
        """Each rank runs the teacher on its share; all ranks end with the whole result."""
        have = int(world.all_sum(mx.array(int(hit is not None))).item())
        if have == world.size:
            return hit  # type: ignore[return-value]
        model, tokenizer = load_teacher()
        vocab = vocab_size(model)
        mine = world.share(prompts)
        seqs, plens = generate_responses(model, tokenizer, mine, self.cfg, progress)
        ids = lps = None
        if with_targets:
            ids, lps, chosen = soft_targets(model, seqs, plens, self.cfg, progress)
        local = TeacherOutputs(seqs, plens, ids, lps, vocab)
        local.chosen_logprobs = chosen if with_targets else None
        out = gather_outputs(world, local)
        if with_targets:
            out.texts, out.char_ends = response_texts(tokenizer, out.sequences, out.prompt_lens)
        gkey, tkey, gpath, tpath = self.paths(domain, prompts)
        path, key = (tpath, tkey) if with_targets else (gpath, gkey)
        # Rank 0 writes; a rank that cannot see its file afterwards has its own disk.
        if world.is_main:
            save_outputs(path, out, {"key": key})
        world.barrier()
        if not world.is_main and not path.exists():
            save_outputs(path, out, {"key": key})
        out.path = path
        return out


def gather_outputs(world: Any, local: TeacherOutputs) -> TeacherOutputs:
    """All ranks' shares (round robin over the prompts) back in prompt order, on every rank."""
    from kd_core.runtime.distributed import interleave

    lens = np.array([len(s) for s in local.sequences], np.int64)
    flat = np.concatenate(local.sequences) if local.sequences else np.zeros(0, np.int32)
    all_lens = world.gather_arrays(lens)
    all_flat = world.gather_arrays(flat.astype(np.int32))
    all_plens = world.gather_arrays(np.array(local.prompt_lens, np.int64))
    parts_seq = [
        np.split(f, np.cumsum(n)[:-1]) if len(n) else []
        for f, n in zip(all_flat, all_lens, strict=True)
    ]
    sequences = interleave(parts_seq)
    prompt_lens = [int(x) for x in interleave([list(p) for p in all_plens])]
    ids = lps = None
    if local.topk_ids is not None:
        k = local.topk_ids[0].shape[1] if local.topk_ids else 0
        rows = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros((0, k), dt)  # noqa: E731
        # Soft targets travel as they are stored (float16), so every rank trains on the same.
        all_ids = world.gather_arrays(rows(local.topk_ids, np.int32))
        all_lps = world.gather_arrays(rows(local.topk_logprobs, np.float16))
        resp = [n - p for n, p in zip(all_lens, all_plens, strict=True)]
        ids = interleave(
            [
                np.split(a, np.cumsum(r)[:-1]) if len(r) else []
                for a, r in zip(all_ids, resp, strict=True)
            ]
        )
        lps = interleave(
            [
                [x.astype(np.float32) for x in np.split(a, np.cumsum(r)[:-1])] if len(r) else []
                for a, r in zip(all_lps, resp, strict=True)
            ]
        )
    out = TeacherOutputs(sequences, prompt_lens, ids, lps, local.teacher_vocab)
    if local.chosen_logprobs is not None:
        flat_c = np.concatenate(local.chosen_logprobs) if local.chosen_logprobs else np.zeros(0)
        all_c = world.gather_arrays(flat_c.astype(np.float32))
        out.chosen_logprobs = interleave(
            [
                np.split(a, np.cumsum(r)[:-1]) if len(r) else []
                for a, r in zip(all_c, resp, strict=True)
            ]
        )
    return out
