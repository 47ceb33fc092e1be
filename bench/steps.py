"""The MLX side of the step benchmarks (runs inside a worker process; see bench/worker.py).

- `KDStep` times kd's own training step: a real `StudentTrainer.train()` on a fixed batch, in
  online mode (teacher forward every step) or offline mode (cached top-k targets; the chunked
  two-phase loss when the logits are large). The trainer's own per-step `step_time` is the
  figure, so the benchmark measures the product, not a copy of its loop.
- `MlxLmCEStep` is the reference: mlx-lm's LoRA cross-entropy step, built the way
  `mlx_lm.tuner.trainer.train()` builds it (default_loss, nn.value_and_grad, mx.compile over
  model + optimizer + random state).
- `Builder` writes the teacher/student folders (mlx-lm layout, which is also Hugging Face's:
  same key names, tied embeddings) that both frameworks load.
"""

from __future__ import annotations  # noqa: I001  (kd_core must be imported before mlx)

import kd_core  # noqa: F401  (loads OpenBLAS before the first `import mlx`)

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from bench.common import (
    ALPHA,
    BATCH,
    BIG_TEACHER,
    LARGE_SEQ,
    LARGE_STUDENT,
    LEARNING_RATE,
    LORA_RANK,
    LORA_SCALE,
    PROMPT_LEN,
    SEQ,
    STUDENT,
    TEACHER,
    TEMPERATURE,
    TOP_K,
    LlamaShape,
    batch_tokens,
)
from kd_core.steps.chunked import want_chunking
from kd_core.config import KDConfig
from kd_core.examples.batch import Example, SoftTargets, Targets, TeacherTokens, make_batch
from kd_core.demo.tiny import LlamaSize, new_llama
from kd_core.models.load import load_model, release
from kd_core.teacher.teacher_pass import soft_targets
from kd_core.run.outputs import adapter_config
from kd_core.train.trainer import StudentTrainer, apply_lora


def _size(shape: LlamaShape) -> LlamaSize:
    return LlamaSize(shape.hidden, shape.layers, shape.intermediate, shape.heads)


def mlx_facts() -> dict[str, Any]:
    from kd_core.runtime import blas

    return {
        "mlx": mx.__version__,
        "mlx_device": str(mx.default_device()),
        "blas_preloaded": blas.loaded_blas,
    }


# The trainer requires the run's fingerprint (its checkpoints are checked against it on a
# resume); a bench trains in a fresh folder and never resumes, so it names itself.
BENCH_FINGERPRINT = {"run": "bench/steps.py: a fresh folder each time, never resumed"}


class Builder:
    """Writes the model folders the benchmarks load (mlx-lm and Hugging Face read them)."""

    def build(self, root: str) -> dict[str, Any]:
        from pydoc_data.topics import topics

        from kd_core.demo.tiny import eos_id, save_model, train_tokenizer

        out = Path(root)
        tok = out / "tokenizer"
        # A real byte-level BPE at the models' vocabulary size, trained on text every Python
        # install has: the distil benchmark needs a tokenizer the distiller can load.
        train_tokenizer(list(topics.values()), STUDENT.vocab, tok)
        eos = eos_id(tok)
        for name, shape, seed in (("teacher", TEACHER, 1), ("student", STUDENT, 2)):
            model, config = new_llama(_size(shape), shape.vocab, seed)
            config = {**shape.config(), **config}
            save_model(model, config, out / name, tok, eos)
            del model
        return {"teacher": str(out / "teacher"), "student": str(out / "student"), **mlx_facts()}

    def build_big_teacher(self, root: str) -> str:
        """`root`/teacher-big (BIG_TEACHER), with the tokenizer `build` wrote."""
        from kd_core.demo.tiny import eos_id, save_model

        out, tok = Path(root), Path(root) / "tokenizer"
        model, config = new_llama(_size(BIG_TEACHER), BIG_TEACHER.vocab, 3)
        save_model(model, {**BIG_TEACHER.config(), **config}, out / "teacher-big", tok, eos_id(tok))
        return str(out / "teacher-big")

    def teacher_logits(self, root: str, path: str, n: int = 16) -> None:
        """Teacher logits on the first n positions of the batch (cross-framework check)."""
        model, _ = load_model(Path(root) / "teacher", "teacher")
        x = batch_tokens(TEACHER.vocab)[:1, :n]
        np.save(path, np.array(model(mx.array(x)).astype(mx.float32)))


def bench_config(mode: str, seq: int, iters: int = 2, loss_chunk: int = 0) -> KDConfig:
    return KDConfig(
        num_iters=iters,
        batch_size=BATCH,
        max_seq_length=seq + 1,
        lora_rank=LORA_RANK,
        lora_scale=LORA_SCALE,
        lora_layers=-1,
        alpha=ALPHA,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        teacher_mode=mode,
        learning_rate=LEARNING_RATE,
        steps_per_save=10**6,
        steps_per_report=10**6,
        loss_chunk=loss_chunk,
    )


def _synthetic_targets(
    rng: np.random.Generator, rows: int, vocab: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and log-probs shaped like a teacher's (sorted, with some tail mass).

    Used only at the 151,936 vocabulary, where no teacher is built: the loss's cost does not
    depend on the values.
    """
    ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(rows)])
    z = rng.normal(size=(rows, k + 1)) * 2.0
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return ids.astype(np.int32), -np.sort(-logp[:, :k], axis=1).astype(np.float32)


class _Student:
    """The student with LoRA (the same init on every side for the same seed)."""

    def __init__(self, pair: str | None, large: bool, mode: str) -> None:
        self.large = large
        self.seq = LARGE_SEQ if large else SEQ
        shape = LARGE_STUDENT if large else STUDENT
        self.vocab = shape.vocab
        self.cfg = bench_config(mode, self.seq)
        if large:
            self.model, _ = new_llama(_size(shape), shape.vocab, seed=2)
        else:
            assert pair is not None
            self.model, _ = load_model(Path(pair) / "student", "student")
        self.tokens = batch_tokens(shape.vocab, self.seq)
        mx.random.seed(0)
        apply_lora(self.model, self.cfg)
        mx.eval(self.model.parameters())


class KDStep(_Student):
    """kd's training step via StudentTrainer.train(), online or offline."""

    def __init__(
        self,
        mode: str,
        pair: str | None = None,
        large: bool = False,
        work: str | None = None,
        on_policy: bool = False,
    ) -> None:
        super().__init__(pair, large, mode)
        self.mode = mode
        self.sampler = None
        if on_policy:  # every step samples SEQ - PROMPT_LEN tokens per row: the same shapes
            self.cfg = self.cfg.replace(
                on_policy_ratio=1.0, divergence="reverse_kl", max_tokens=self.seq - PROMPT_LEN
            )
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="kd-bench-"))
        rows = [r for r in self.tokens]
        lens = [PROMPT_LEN] * len(rows)
        self.teacher = None
        if large:
            rng = np.random.default_rng(1)
            targets = [
                _synthetic_targets(rng, len(r) - PROMPT_LEN, LARGE_STUDENT.vocab, TOP_K)
                for r in rows
            ]
        else:
            assert pair is not None
            teacher, _ = load_model(Path(pair) / "teacher", "teacher")
            if mode == "online":
                self.teacher = teacher
                targets = [(None, None)] * len(rows)
            else:
                # The teacher pass's own function, rounded to float16 as the cache stores it.
                ids, lps, _ = soft_targets(teacher, rows, lens, self.cfg)
                targets = [
                    (i, lp.astype(np.float16).astype(np.float32))
                    for i, lp in zip(ids, lps, strict=True)
                ]
                del teacher
                release()
        if on_policy:
            self.sampler = _sampler(pair, self.model, self.cfg)
        self.examples = []
        for r, (ids, lps) in zip(rows, targets, strict=True):
            target: Targets = (
                TeacherTokens(r.copy(), PROMPT_LEN) if mode == "online" else SoftTargets(ids, lps)
            )
            self.examples.append(Example(r.copy(), PROMPT_LEN, r[:PROMPT_LEN].copy(), target))
        self.peak_bytes: list[int] = []

    def _trainer(self, iters: int, divergence: str | None = None) -> StudentTrainer:
        cfg = self.cfg.replace(num_iters=iters)
        if divergence is not None:
            cfg = cfg.replace(divergence=divergence)
        return StudentTrainer(
            self.model,
            cfg,
            self.examples,
            self.work / "out",
            adapter_config(cfg, len(self.model.layers), "student", "teacher", "bench"),
            domain="bench",
            teacher=self.teacher,
            sampler=self.sampler,
            fingerprint=BENCH_FINGERPRINT,
        )

    def steps(self, n: int, divergence: str | None = None) -> dict[str, Any]:
        """n + 1 real steps (the first compiles and is reported apart); per-step seconds.
        `divergence` overrides the configuration's (offline: the divergence bench)."""
        trainer = self._trainer(n + 1, divergence)
        trainer.train()
        peak = int(mx.get_peak_memory())  # train() resets the peak when it starts
        times = [row["step_time"] for row in trainer.metrics]
        return {
            "warmup": times[0],
            "times": times[1:],
            "peak_bytes": peak,
            "chunked_loss": self.mode == "offline"
            and want_chunking(self.cfg.loss_chunk, BATCH, self.cfg.max_seq_length, self.vocab) > 0,
            "response_tokens": trainer.metrics[-1]["tokens"],
            "positions": BATCH * self.seq,
            "sample_s": [row["sample_s"] for row in trainer.metrics[1:]],
        }

    def profile(self, repeats: int = 2) -> dict[str, float]:
        """Where an online step's time goes, measured as the trainer runs it (rows split over
        its parallel CPU streams): the teacher forward alone, and kd's own step with alpha = 0
        (plain CE, no teacher) on the same student and batch. Best of `repeats`."""
        from kd_core.runtime.cpu_streams import StreamSet, row_slices, stream_count

        batch = make_batch(self.examples, self.cfg.max_seq_length)
        teacher_s = []
        if self.teacher is not None:
            pool = StreamSet(stream_count(self.cfg.cpu_streams, BATCH))
            x = batch.soft.inputs
            with pool.active():
                for _ in range(repeats + 1):
                    t0 = time.perf_counter()
                    outs = []
                    for i, rows in enumerate(row_slices(len(x), pool.n)):
                        with pool.on(i):
                            outs.append(self.teacher(mx.array(x[rows])))
                    mx.eval(outs)
                    teacher_s.append(time.perf_counter() - t0)
        # alpha = 0 never reads the soft targets (CEStep): zeros stand in for them.
        ce_examples = [
            Example(
                e.tokens,
                e.prompt_len,
                e.teacher_prompt,
                SoftTargets(
                    np.zeros((len(e.tokens) - e.prompt_len, TOP_K), np.int32),
                    np.zeros((len(e.tokens) - e.prompt_len, TOP_K), np.float32),
                ),
            )
            for e in self.examples
        ]
        cfg = self.cfg.replace(alpha=0.0, teacher_mode="offline", num_iters=repeats + 1)
        trainer = StudentTrainer(
            self.model,
            cfg,
            ce_examples,
            self.work / "profile-ce",
            adapter_config(cfg, len(self.model.layers), "student", "none", "bench"),
            domain="bench",
            fingerprint=BENCH_FINGERPRINT,
        )
        trainer.train()
        ce_s = [row["step_time"] for row in trainer.metrics[1:]]
        return {
            "teacher_forward_s": min(teacher_s[1:]) if teacher_s else 0.0,
            "student_ce_step_s": min(ce_s),
        }

    def teacher_logits(self, path: str, n: int = 16) -> None:
        """Online mode: the teacher's logits on the first n positions (cross-framework check)."""
        assert self.teacher is not None
        x = batch_tokens(TEACHER.vocab)[:1, :n]
        np.save(path, np.array(self.teacher(mx.array(x)).astype(mx.float32)))

    def profile_chunked(self, repeats: int = 1) -> dict[str, Any]:
        return profile_chunked(self, repeats)


def _sampler(pair: str | None, model: Any, cfg: KDConfig) -> Any:
    """The on-policy sampler of the bench student (one tokenizer: identical vocabularies)."""
    from kd_core.train.on_policy import StudentSampler
    from kd_core.vocab.plan import plan_vocab_alignment

    assert pair is not None
    _, tok = load_model(Path(pair) / "student", "student")
    al = plan_vocab_alignment(tok, tok, STUDENT.vocab, STUDENT.vocab)
    return StudentSampler(model, tok, cfg, al, int(tok.eos_token_id))


class MlxLmCEStep(_Student):
    """mlx-lm's own LoRA step: default_loss + nn.value_and_grad + mx.compile over the state."""

    def __init__(self, pair: str | None = None, large: bool = False) -> None:
        super().__init__(pair, large, "offline")
        self._build()

    def _build(self) -> None:
        from mlx_lm.tuner.trainer import default_loss

        model = self.model
        self.optimizer = optimizer = optim.Adam(learning_rate=LEARNING_RATE)
        optimizer.init(model.trainable_parameters())
        loss_value_and_grad = nn.value_and_grad(model, default_loss)
        state = [model.state, optimizer.state, mx.random.state]

        # As in mlx_lm.tuner.trainer.train() (one device, no gradient accumulation).
        @partial(mx.compile, inputs=state, outputs=state)
        def step(batch, prev_grad, do_update):
            (lvalue, toks), grad = loss_value_and_grad(model, *batch)
            if prev_grad is not None:
                grad = tree_map(lambda x, y: x + y, grad, prev_grad)
            if do_update:
                optimizer.update(model, grad)
                grad = None
            return lvalue, toks, grad

        self._step = step
        self._state = state
        # (offset, length) per row as iterate_batches gives them: the prompt is masked.
        self._batch = (
            mx.array(self.tokens),
            mx.array([[PROMPT_LEN, self.tokens.shape[1]]] * self.tokens.shape[0]),
        )
        model.train()

    def steps(self, n: int) -> dict[str, Any]:
        """n + 1 steps, the first reported apart (it compiles on the first call)."""
        mx.eval(self._state)
        mx.reset_peak_memory()
        times = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            lvalue, toks, _ = self._step(self._batch, None, True)
            mx.eval(self._state, lvalue, toks)
            times.append(time.perf_counter() - t0)
        return {
            "warmup": times[0],
            "times": times[1:],
            "peak_bytes": int(mx.get_peak_memory()),
            "positions": int(self.tokens.shape[0] * self.seq),
        }


def profile_chunked(step: KDStep, repeats: int = 1) -> dict[str, Any]:
    """Where the chunked offline step's time goes (large vocabulary): body forward, the
    per-chunk head + loss + dL/dh (with alpha as configured and with alpha = 0, i.e. CE
    alone), and the body's backward + update. Reads ChunkedStep's parts, so it follows
    kd_core.steps.chunked; returns {"error": ...} if those parts have moved."""
    from kd_core.steps.chunked import ChunkedCEStep, ChunkedStep, split_model

    model, cfg = step.model, step.cfg
    split = split_model(model)
    chunk = want_chunking(cfg.loss_chunk, BATCH, cfg.max_seq_length, step.vocab)
    if split is None or not chunk:
        return {"error": "the model is not split or the loss is not chunked"}
    b = make_batch(step.examples, cfg.max_seq_length)
    inputs, targets, mask = mx.array(b.inputs), mx.array(b.targets), mx.array(b.mask)
    ids, lps = mx.array(b.soft.topk_ids), mx.array(b.soft.topk_logprobs)
    inv = mx.array(1.0 / b.tokens, dtype=mx.float32)
    out: dict[str, Any] = {"chunk": chunk}
    for alpha in (cfg.alpha, 0.0):
        opt = optim.Adam(learning_rate=LEARNING_RATE)
        opt.init(model.trainable_parameters())
        kind = ChunkedStep if alpha else ChunkedCEStep  # as make_step chooses
        cs = kind(model, split, opt, cfg.replace(alpha=alpha), chunk)
        if not (hasattr(cs, "_chunk_grad") and hasattr(cs, "_body_backward")):
            return {"error": "kd_core.steps.chunked.ChunkedStep changed; profile not available"}
        runs: list[dict[str, float]] = []
        for _ in range(repeats + 1):  # the first pass compiles: not counted
            t0 = time.perf_counter()
            h = split.body(inputs)
            mx.eval(h)
            t1 = time.perf_counter()
            n, d = h.shape[0] * h.shape[1], h.shape[2]
            hf, grads = h.reshape(n, d), []
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                per_position = [targets.reshape(n)[s:e], mask.reshape(n)[s:e]]
                if alpha:
                    per_position += [ids.reshape(n, -1)[s:e], lps.reshape(n, -1)[s:e]]
                (loss, _), g = cs._chunk_grad(hf[s:e], inv, *per_position)
                mx.eval(g, loss)
                grads.append(g)
            t2 = time.perf_counter()
            dh = mx.concatenate(grads, axis=0).reshape(h.shape).astype(mx.float32)
            cs._body_backward(inputs, dh, None, True)
            mx.eval(model.state, opt.state)
            t3 = time.perf_counter()
            runs.append(
                {"body_forward_s": t1 - t0, "chunks_s": t2 - t1, "body_backward_update_s": t3 - t2}
            )
        best = {k: min(r[k] for r in runs[1:]) for k in runs[0]}
        out["kd" if alpha else "ce_only"] = best
    return out
