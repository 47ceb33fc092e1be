"""The teacher pass: responses and soft targets for one domain, through the cache.

For every prompt the teacher samples a response (kd_core/generate.py: teacher_temperature,
max_tokens), then one teacher-forced forward over prompt + response gives its distribution
at every response position. We keep the top-k ids and their log P_T softened at the *loss*
temperature T over the full vocabulary; the tail mass is 1 - sum(exp(...)). The files and
their keys are kd_core/teacher/cache.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.config import KDConfig
from kd_core.examples.batch import forward_inputs
from kd_core.generate import (
    GenerationStopped,
    ProgressFn,
    fitted_prompts,
    generate_responses,
)
from kd_core.losses.core import log_softmax, topk_of
from kd_core.models.identity import ModelIdentity
from kd_core.models.load import vocab_size
from kd_core.runtime.cpu_streams import StreamSet, row_slices, stream_count
from kd_core.runtime.distributed import interleave
from kd_core.teacher.cache import (
    TeacherOutputs,
    generation_key,
    load_partial,
    read_or_discard,
    response_texts,
    save_outputs,
    save_partial,
    targets_key,
)

FWD_CHUNK = 8  # sequences per teacher forward when extracting targets


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
            if (hit := read_or_discard(path, {"key": key}, targets, warn)) is not None:
                return hit
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
        seq_out = read_or_discard(gpath, {"key": gkey}, False, warn)
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
        done = load_partial(partial_path, gkey)
        todo = [i for i in range(len(fitted)) if i not in done]
        try:
            seqs, plens = generate_responses(
                model, tokenizer, [], self.cfg, progress, should_stop, [fitted[i] for i in todo]
            )
        except GenerationStopped as e:
            for j, seq in e.finished.items():
                done[todo[j]] = (seq, len(fitted[todo[j]][0]))
            if done:
                save_partial(partial_path, gkey, done)
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
