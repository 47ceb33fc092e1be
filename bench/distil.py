"""Whole-domain runs (offline vs online) and the teacher cache's size and precision.

Runs inside a worker process. `Distil.run` is one TrueKnowledgeDistiller.distill_domain call
with KD_CACHE_DIR pointed at a fresh folder, so the teacher pass really runs (generation in
both modes; the soft-target forward in offline mode). `Distil.cache_check` reads the cache
file that run wrote and compares the KD loss from the stored float16 targets with the loss
from float32 targets recomputed by the same teacher.
"""

from __future__ import annotations  # noqa: I001  (kd_core must be imported before mlx)

import kd_core  # noqa: F401  (loads OpenBLAS before the first `import mlx`)

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from bench.common import BATCH
from kd_core.config import KDConfig
from kd_core.examples.batch import make_batch
from kd_core.domains import DOMAIN_PROMPTS
from kd_core.events import CacheUsed, DomainFinished, Event, PhaseStarted, Progress, Step

DOMAIN = "thinking"
N_PROMPTS = 50


def prompts() -> list[str]:
    return list(DOMAIN_PROMPTS[DOMAIN]["examples"][:N_PROMPTS])


def distil_config(mode: str, iters: int, output: str) -> KDConfig:
    """KDConfig's defaults (top_k 32, max_tokens 128, T 2, alpha 0.7, rank 16) but these."""
    return KDConfig(teacher_mode=mode, num_iters=iters, batch_size=BATCH, output=output)


def _safetensors_sizes(path: Path) -> dict[str, int]:
    """Bytes of each tensor in a safetensors file, from its header."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {
        k: v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if k != "__metadata__"
    }


class Distil:
    def run(
        self,
        pair: str,
        mode: str,
        iters: int,
        cache_dir: str,
        output: str,
        teacher: str = "teacher",
    ) -> dict[str, Any]:
        """One domain end to end; wall time and where it went (from the run's own events)."""
        from kd_core.distiller import TrueKnowledgeDistiller

        os.environ["KD_CACHE_DIR"] = cache_dir
        marks: dict[str, float] = {}
        step_times: list[float] = []
        info: dict[str, Any] = {}
        t0 = time.perf_counter()

        def sink(e: Event) -> None:
            now = time.perf_counter() - t0
            if isinstance(e, PhaseStarted):
                marks.setdefault(e.phase, now)
            elif isinstance(e, Progress) and e.phase == "teacher" and e.message == "generating":
                marks["generated"] = now  # the last one: all responses written
            elif isinstance(e, CacheUsed):
                marks["teacher_done"] = now
                info.update(cache=e.path, cache_hit=e.hit, response_tokens=e.response_tokens)
            elif isinstance(e, Step):
                step_times.append(e.elapsed_s)
            elif isinstance(e, DomainFinished):
                info["result"] = e.result.to_dict()

        d = TrueKnowledgeDistiller(
            f"{pair}/{teacher}",
            f"{pair}/student",
            distil_config(mode, iters, output),
            on_event=sink,
        )
        d.distill_domain(DOMAIN, prompts())
        wall = time.perf_counter() - t0
        per_step = np.diff([0.0, *step_times])
        res = info.get("result", {})
        return {
            "mode": mode,
            "iters": iters,
            "wall_s": wall,
            "teacher_pass_s": marks.get("teacher_done", 0.0) - marks.get("teacher", 0.0),
            # Teacher load + sampling the responses (0 when the responses came from the cache).
            "generation_s": marks["generated"] - marks["teacher"] if "generated" in marks else 0.0,
            "steps_total_s": float(step_times[-1]) if step_times else 0.0,
            "student_pass_s": wall - marks.get("student", wall),
            "train_s": res.get("training_time_seconds"),
            "step_median_s": float(np.median(per_step[1:])) if len(per_step) > 1 else None,
            "first_step_s": float(per_step[0]) if len(per_step) else None,
            "tokens_per_second": res.get("tokens_per_second"),
            "cache": info.get("cache"),
            "cache_hit": info.get("cache_hit"),
            "response_tokens": info.get("response_tokens"),
        }

    def cache_check(
        self, pair: str, cache: str, output: str, sequences: int = 16
    ) -> dict[str, Any]:
        """Bytes per response token of a real cache file; KD loss float16 vs float32 targets.

        The loss comparison uses the first `sequences` examples (the teacher forward that
        recomputes float32 targets is the costly part); the byte counts use the whole file.
        """
        from kd_core.examples.same_vocab import build_examples
        from kd_core.losses.core import sparse_kd_loss_sum
        from kd_core.models.load import load_model
        from kd_core.teacher.cache import TeacherOutputs, load_outputs
        from kd_core.teacher.teacher_pass import soft_targets
        from kd_core.vocab.plan import plan_vocab_alignment

        path = Path(cache)
        _, meta = mx.load(str(path), return_metadata=True)
        stored = load_outputs(path, {"key": json.loads(meta["key"])}, with_targets=True)
        sizes = _safetensors_sizes(path)
        tokens = stored.response_tokens  # of the whole file
        cfg = KDConfig()
        n = min(sequences, len(stored.sequences))
        stored = TeacherOutputs(
            stored.sequences[:n],
            stored.prompt_lens[:n],
            stored.topk_ids[:n],
            stored.topk_logprobs[:n],
            stored.teacher_vocab,
        )
        teacher, t_tok = load_model(Path(pair) / "teacher", "teacher")
        ids32, lps32, _ = soft_targets(teacher, stored.sequences, stored.prompt_lens, cfg)
        same_ids = all(np.array_equal(a, b) for a, b in zip(ids32, stored.topk_ids, strict=True))
        max_lp_err = max(
            float(np.abs(a - b).max()) for a, b in zip(lps32, stored.topk_logprobs, strict=True)
        )
        fp32 = TeacherOutputs(
            stored.sequences, stored.prompt_lens, ids32, lps32, stored.teacher_vocab
        )
        # The student as trained by the offline run (its adapters), where the loss matters.
        student, s_tok = load_model(
            Path(pair) / "student", "student", adapter_path=Path(output) / DOMAIN
        )
        s_vocab = int(student(mx.array([[0]])).shape[-1])
        align = plan_vocab_alignment(t_tok, s_tok, stored.teacher_vocab, s_vocab, "auto")
        losses = {}
        for name, outs in (("float16", stored), ("float32", fp32)):
            examples = build_examples(prompts()[:n], outs, s_tok, align, online=False).examples
            total = count = 0.0
            for s in range(0, len(examples), BATCH):
                b = make_batch(examples[s : s + BATCH], cfg.max_seq_length)
                kd, valid = sparse_kd_loss_sum(
                    student(mx.array(b.inputs)),
                    mx.array(b.soft.topk_ids),
                    mx.array(b.soft.topk_logprobs),
                    cfg.temperature,
                    mx.array(b.mask),
                )
                total += kd.item()
                count += valid.item()
            losses[name] = total / max(count, 1.0)
        targets = sizes["topk_ids"] + sizes["topk_logprobs"]
        return {
            "file_bytes": path.stat().st_size,
            "response_tokens": tokens,
            "bytes_per_token": path.stat().st_size / tokens,
            "targets_bytes_per_token": targets / tokens,
            "id_bytes": sizes["topk_ids"] // (tokens * cfg.top_k),
            "top_k": cfg.top_k,
            "teacher_vocab": stored.teacher_vocab,
            "kd_loss_float16_targets": losses["float16"],
            "kd_loss_float32_targets": losses["float32"],
            "kd_loss_abs_diff": abs(losses["float16"] - losses["float32"]),
            "kd_loss_rel_diff": abs(losses["float16"] - losses["float32"])
            / max(abs(losses["float32"]), 1e-30),
            "max_logprob_abs_err": max_lp_err,
            "same_topk_ids": same_ids,
            "loss_check_sequences": n,
        }

    def large_vocab_cache(
        self, folder: str, sequences: int = 50, response: int = 128, vocab: int = 151_936
    ) -> dict[str, Any]:
        """Bytes per token of a cache file written by kd's own writer at Qwen's vocabulary.

        No teacher of that size is built here: the targets are synthetic, the format is real
        (ids no longer fit uint16, so they are stored as uint32).
        """
        from kd_core.teacher.cache import TeacherOutputs, save_outputs

        rng = np.random.default_rng(0)
        k = KDConfig().top_k
        seqs = [rng.integers(0, vocab, 32 + response).astype(np.int32) for _ in range(sequences)]
        ids = [rng.integers(0, vocab, (response, k)).astype(np.int32) for _ in range(sequences)]
        lps = [
            np.sort(rng.normal(size=(response, k)).astype(np.float32) - 5.0)[:, ::-1]
            for _ in range(sequences)
        ]
        out = TeacherOutputs(seqs, [32] * sequences, ids, lps, vocab)
        path = Path(folder) / "large-vocab.safetensors"
        save_outputs(path, out, {"key": "bench"})
        sizes = _safetensors_sizes(path)
        tokens = sequences * response
        return {
            "bytes_per_token": path.stat().st_size / tokens,
            "targets_bytes_per_token": (sizes["topk_ids"] + sizes["topk_logprobs"]) / tokens,
            "id_bytes": sizes["topk_ids"] // (tokens * k),
            "vocab": vocab,
        }
