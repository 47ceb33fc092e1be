"""The student pass: LoRA training against the teacher's distributions.

Loss per optimiser step (DESIGN.md):  L = alpha * KD + (1 - alpha) * CE, each a *sum* over
the valid response tokens of the whole step divided by their count. That count is known on
the host before the step runs (masks are built in numpy), so it enters the compiled step as
a scalar and no host round-trip happens inside it.

Offline mode: KD against cached top-k soft targets (+ tail). Online mode: the teacher's
full distribution, computed each step outside the compiled student step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from kd_core.atomic_io import atomic_save_safetensors, atomic_write_json, atomic_write_jsonl
from kd_core.chunked import ChunkedStep, split_model, want_chunking
from kd_core.config import KDConfig
from kd_core.control import RunControl
from kd_core.cpu_streams import StreamSet, row_slices, shard_batch, stream_count
from kd_core.data import Batch, BatchPlan, Example, make_batch, valid_tokens
from kd_core.distributed import World
from kd_core.distributed import world as get_world
from kd_core.events import CheckpointSaved, EventSink, Log, Paused, Step, null_sink
from kd_core.losses import ce_loss_sum, kd_loss_sum, offline_loss_sums, online_loss_sums
from kd_core.vocab import VocabAlignment, align_vocab_sizes

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and what to change."""


@dataclass
class DomainResult:
    """What distil_domain returns (also one entry of kd_summary.json)."""

    domain: str
    final_kd_loss: float
    final_ce_loss: float
    final_combined_loss: float
    training_time_seconds: float
    adapter_path: str
    steps: int
    tokens: int
    tokens_per_second: float
    peak_memory_gb: float
    metrics_path: str
    examples: int
    teacher_cache: str | None = None
    resumed_from: int | None = None
    stopped: bool = False
    checkpoints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_schedule(cfg: KDConfig) -> Any:
    main: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        main = optim.cosine_decay(
            cfg.learning_rate, max(1, cfg.num_iters - cfg.warmup_steps), cfg.learning_rate * 0.1
        )
    if cfg.warmup_steps > 0:
        warm = optim.linear_schedule(
            cfg.learning_rate / cfg.warmup_steps, cfg.learning_rate, cfg.warmup_steps
        )
        const = main if callable(main) else (lambda _: mx.array(cfg.learning_rate))
        return optim.join_schedules([warm, const], [cfg.warmup_steps])
    return main


def apply_lora(model: nn.Module, cfg: KDConfig) -> int:
    """Freeze the student and add LoRA layers (QLoRA when its linears are quantized)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n_layers = len(model.layers)
    num = n_layers if cfg.lora_layers == -1 else min(cfg.lora_layers, n_layers)
    model.freeze()
    linear_to_lora_layers(model, num, lora_parameters(cfg))
    return num


def lora_parameters(cfg: KDConfig) -> dict[str, Any]:
    return {"rank": cfg.lora_rank, "scale": cfg.lora_scale, "dropout": cfg.lora_dropout}


def adapter_config(
    cfg: KDConfig, num_layers: int, student: str, teacher: str, domain: str
) -> dict[str, Any]:
    """mlx-lm's adapter_config.json (load/generate/fuse read it) plus our KD settings."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(cfg),
        "model": student,
        "kd": {"teacher": teacher, "domain": domain, **cfg.to_dict()},
    }


class StudentTrainer:
    """Trains one domain's adapter; checkpoints and resumes by step."""

    def __init__(
        self,
        model: nn.Module,
        cfg: KDConfig,
        examples: list[Example],
        out_dir: Path,
        adapter_cfg: dict[str, Any],
        *,
        domain: str,
        sink: EventSink = null_sink,
        control: RunControl | None = None,
        teacher: nn.Module | None = None,
        alignment: VocabAlignment | None = None,
        world: World | None = None,
    ) -> None:
        if not examples:
            raise ValueError(f"domain {domain!r}: no training examples")
        self.model = model
        self.cfg = cfg
        self.examples = examples
        self.out_dir = out_dir
        self.adapter_cfg = adapter_cfg
        self.domain = domain
        self.sink = sink
        self.control = control or RunControl()
        self.teacher = teacher
        self.alignment = alignment
        self.online = teacher is not None
        self.world = world or get_world()
        if cfg.batch_size < self.world.size:
            raise ValueError(
                f"batch_size: {cfg.batch_size} is fewer than the "
                f"{self.world.size} processes; use at least one per process"
            )
        self.plan = BatchPlan(len(examples), cfg.batch_size, cfg.seed)
        self.optimizer = optim.Adam(learning_rate=build_schedule(cfg))
        rows = max(1, cfg.batch_size // self.world.size)  # sequences per micro-batch per rank
        self.streams = StreamSet(stream_count(cfg.cpu_streams, rows, self.world.distributed))
        self.metrics: list[dict[str, Any]] = []
        # KD_VERIFY_SYNC=1: check every step that all ranks hold identical weights (tests).
        self.verify_sync = self.world.distributed and os.environ.get("KD_VERIFY_SYNC") == "1"

    # ---- the loss -------------------------------------------------------------------------
    def _loss(
        self,
        model: nn.Module,
        inputs: mx.array,
        targets: mx.array,
        mask: mx.array,
        ids: mx.array | None,
        lps: mx.array | None,
        t_logits: mx.array | None,
        inv_count: mx.array,
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        cfg = self.cfg
        logits = model(inputs)
        if t_logits is None or cfg.alpha == 0.0:  # alpha = 0 is exactly plain CE fine-tuning
            kd_sum, ce_sum = offline_loss_sums(
                logits, targets, mask, ids, lps, cfg.alpha, cfg.temperature
            )
        else:
            strategy = self.alignment.strategy if self.alignment else "truncate"
            t_al, s_al = align_vocab_sizes(t_logits, logits, strategy, self.alignment)
            if strategy == "truncate" and s_al.shape == logits.shape:
                # KD over the student's whole vocabulary, in its order: one fused pass.
                kd_sum, ce_sum = online_loss_sums(logits, t_al, targets, mask, cfg.temperature)
            else:
                ce_sum, _ = ce_loss_sum(logits, targets, mask=mask)
                kd_sum, _ = kd_loss_sum(t_al, s_al, cfg.temperature, mask)
        loss = (cfg.alpha * kd_sum + (1.0 - cfg.alpha) * ce_sum) * inv_count
        return loss, (kd_sum, ce_sum)

    def _teacher_logits(self, batch: Batch) -> mx.array:
        logits = self.teacher(mx.array(batch.teacher_inputs))
        idx = mx.array(batch.teacher_index)[..., None]
        return mx.stop_gradient(mx.take_along_axis(logits, idx, axis=1))

    def _build_step(self) -> Any:
        value_and_grad = nn.value_and_grad(self.model, self._loss)
        state = [self.model.state, self.optimizer.state, mx.random.state]
        accum = self.cfg.grad_accumulation

        @partial(mx.compile, inputs=state, outputs=state)
        def step(inputs, targets, mask, ids, lps, t_logits, inv_count, prev_grad, do_update):
            (loss, (kd, ce)), grad = value_and_grad(
                self.model, inputs, targets, mask, ids, lps, t_logits, inv_count
            )
            if prev_grad is not None:
                grad = tree_map_add(grad, prev_grad)
            if do_update:
                # Each rank's loss is divided by the global token count: summing the
                # gradients gives exactly the single-process gradient.
                self.optimizer.update(self.model, self.world.sum_tree(grad))
                grad = None
            return loss, kd, ce, grad

        del accum
        return step

    def _chunked_step(self) -> ChunkedStep | None:
        """The two-phase chunked step when the logits would be large (offline mode only)."""
        if self.online:
            return None
        vocab = int(self.model(mx.array([[0]], dtype=mx.int32)).shape[-1])
        chunk = want_chunking(
            self.cfg.loss_chunk, self.cfg.batch_size, self.cfg.max_seq_length, vocab
        )
        if not chunk:
            return None
        split = split_model(self.model)
        if split is None:
            self.sink(
                Log(
                    f"{self.domain}: this model cannot be split into body and head; "
                    "computing the loss unchunked",
                    "warning",
                )
            )
            return None
        return ChunkedStep(
            self.model,
            split,
            self.optimizer,
            self.cfg.alpha,
            self.cfg.temperature,
            chunk,
            reduce=self.world.sum_tree,
            streams=self.streams,
        )

    def _parts(self, batches: list[Batch], chunked: bool) -> list[tuple[Batch, int]]:
        """(micro-batch shard, stream index) in order; the chunked step shards internally."""
        if chunked or self.streams.n == 1:
            return [(b, 0) for b in batches]
        return [
            (shard_batch(b, sl), i)
            for b in batches
            for i, sl in enumerate(row_slices(len(b.inputs), self.streams.n))
        ]

    # ---- checkpoints ----------------------------------------------------------------------
    def _adapter_weights(self) -> dict[str, mx.array]:
        return dict(tree_flatten(self.model.trainable_parameters()))

    def save_adapters(self, folder: Path) -> None:
        if not self.world.is_main:
            return
        atomic_save_safetensors(folder / "adapters.safetensors", self._adapter_weights())
        atomic_write_json(folder / "adapter_config.json", self.adapter_cfg)

    def save_checkpoint(self, step: int) -> Path:
        folder = self.out_dir / f"{CHECKPOINT_PREFIX}{step}"
        if not self.world.is_main:
            return folder  # one writer: rank 0
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).unlink(missing_ok=True)
        self.save_adapters(folder)
        opt = dict(tree_flatten(self.optimizer.state))
        atomic_save_safetensors(folder / "optimizer.safetensors", opt)
        self.write_metrics()
        # The state file is the commit marker: written last, so a checkpoint is either whole
        # (with its metrics already on disk) or ignored by `latest_checkpoint`.
        atomic_write_json(
            folder / STATE_FILE,
            {"step": step, "domain": self.domain, "metrics_rows": len(self.metrics)},
        )
        self.sink(CheckpointSaved(self.domain, step, str(folder)))
        return folder

    def write_metrics(self) -> None:
        if not self.world.is_main:
            return
        atomic_write_jsonl(self.out_dir / "metrics.jsonl", self.metrics)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        best = None
        for d in self.out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
            try:
                step = int(d.name[len(CHECKPOINT_PREFIX) :])
                state = json.loads((d / STATE_FILE).read_text())
            except (ValueError, OSError, json.JSONDecodeError):
                continue  # incomplete checkpoint (killed mid-save): ignore it
            if state.get("step") == step and (best is None or step > best[0]):
                best = (step, d)
        return best

    def restore(self, step: int, folder: Path) -> None:
        self.model.load_weights(
            list(mx.load(str(folder / "adapters.safetensors")).items()), strict=False
        )
        opt = mx.load(str(folder / "optimizer.safetensors"))
        self.optimizer.state = tree_unflatten(list(opt.items()))
        mx.eval(self.model.parameters(), self.optimizer.state)
        rows = []
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                if row.get("step", 0) <= step:
                    rows.append(row)
        self.metrics = rows

    # ---- the loop -------------------------------------------------------------------------
    def train(self, resume: bool = False) -> DomainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = 1
        resumed_from = None
        self.optimizer.init(self.model.trainable_parameters())
        found = self.latest_checkpoint() if resume and self.world.is_main else None
        found_step = self.world.broadcast_int(found[0] if found else -1)
        if found_step >= 0:
            if found:
                self.restore(*found)
                self.sink(Log(f"{self.domain}: resumed from {found[1].name}"))
            if self.world.distributed:  # rank 0 read the checkpoint: everyone gets its state
                self.model.update(self.world.broadcast_tree(self.model.trainable_parameters()))
                self.optimizer.state = self.world.broadcast_tree(self.optimizer.state)
            resumed_from = found_step
            start = resumed_from + 1
        elif not resume and self.world.is_main:
            for d in self.out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
                shutil.rmtree(d, ignore_errors=True)
        step_fn = self._build_step()
        chunked = self._chunked_step()
        self.model.train()
        top_k = None if self.online else self.examples[0].topk_ids.shape[1]
        mx.reset_peak_memory()
        with self.streams.active():
            return self._loop(start, resumed_from, step_fn, chunked, top_k)

    def _loop(
        self,
        start: int,
        resumed_from: int | None,
        step_fn: Any,
        chunked: ChunkedStep | None,
        top_k: int | None,
    ) -> DomainResult:
        cfg = self.cfg
        accum = cfg.grad_accumulation
        elapsed = sum(r.get("step_time", 0.0) for r in self.metrics)
        tokens_total = sum(r.get("tokens", 0) for r in self.metrics)
        checkpoints: list[str] = []
        stopped = False
        last_saved = resumed_from or 0
        it = start - 1
        for it in range(start, cfg.num_iters + 1):
            if self.control.paused:
                self.sink(Paused(True, self.domain, it - 1))
                self.control.wait_while_paused()
                self.sink(Paused(False, self.domain, it - 1))
            stop = self.control.stop_requested
            if self.world.distributed:  # rank 0 decides, or the others would wait forever
                stop = bool(self.world.broadcast_int(int(stop)))
            if stop:
                stopped = True
                it -= 1
                break
            tic = time.perf_counter()
            # Randomness (LoRA dropout) is a function of (seed, step): a resumed run draws
            # exactly what an uninterrupted one would, with no RNG state to save.
            mx.random.seed((cfg.seed << 20) + it)
            step_idx = [self.plan.indices(it, m, accum) for m in range(accum)]
            n_tok = sum(
                valid_tokens(self.examples[i], cfg.max_seq_length) for idx in step_idx for i in idx
            )  # the whole step, all ranks
            batches = [
                make_batch(
                    [self.examples[i] for i in self.world.share(idx)], cfg.max_seq_length, top_k
                )
                for idx in step_idx
            ]
            inv = mx.array(1.0 / max(n_tok, 1), dtype=mx.float32)
            grad = None
            loss_total = kd_total = ce_total = mx.array(0.0)
            for j, (b, s) in enumerate(parts := self._parts(batches, chunked is not None)):
                # Built lazily on stream s; evaluated once below, so the shards run at once.
                with self.streams.on(s):
                    t_logits = self._teacher_logits(b) if self.online else None
                    ids = None if b.topk_ids is None else mx.array(b.topk_ids)
                    lps = None if b.topk_logprobs is None else mx.array(b.topk_logprobs)
                    fn = chunked if chunked is not None else step_fn
                    args = (mx.array(b.inputs), mx.array(b.targets), mx.array(b.mask), ids, lps)
                    if chunked is None:
                        args = (*args, t_logits)
                    loss, kd, ce, grad = fn(*args, inv, grad, j == len(parts) - 1)
                    loss_total, kd_total = loss_total + loss, kd_total + kd
                    ce_total = ce_total + ce
            if self.world.distributed:
                loss_total, kd_total, ce_total = self.world.all_sum(
                    mx.stack([loss_total, kd_total, ce_total])
                )
            mx.eval(loss_total, kd_total, ce_total, self.model.state, self.optimizer.state)
            if self.verify_sync:
                self.world.check_same(
                    sum(
                        v.astype(mx.float32).sum()
                        for _, v in tree_flatten(self.model.trainable_parameters())
                    ),
                    f"weights at step {it}",
                )
            dt = time.perf_counter() - tic
            loss_v = loss_total.item()
            if not math.isfinite(loss_v):
                raise NonFiniteLoss(
                    f"{self.domain}: loss became {loss_v} at step {it}; kept the last good "
                    f"checkpoint (step {last_saved}); lower learning_rate (now "
                    f"{cfg.learning_rate:g}) or temperature, or check the data"
                )
            elapsed += dt
            tokens_total += n_tok
            denom = max(n_tok, 1)
            kd_v, ce_v = kd_total.item() / denom, ce_total.item() / denom
            lr = float(self.optimizer.learning_rate.item())
            done = it - start + 1
            eta = (elapsed / max(1, it)) * (cfg.num_iters - it) if done else None
            row = {
                "step": it,
                "kd": kd_v,
                "ce": ce_v,
                "combined": loss_v,
                "lr": lr,
                "tokens": n_tok,
                "step_time": dt,
                "elapsed_s": elapsed,
            }
            self.metrics.append(row)
            self.sink(
                Step(
                    self.domain,
                    it,
                    cfg.num_iters,
                    kd_v,
                    ce_v,
                    loss_v,
                    lr,
                    n_tok,
                    n_tok / dt if dt > 0 else 0.0,
                    mx.get_peak_memory() / 1e9,
                    elapsed,
                    eta,
                )
            )
            if it % cfg.steps_per_save == 0 or it == cfg.num_iters:
                checkpoints.append(str(self.save_checkpoint(it)))
                last_saved = it
            elif it % cfg.steps_per_report == 0:
                self.write_metrics()
        final_step = it
        if stopped and final_step > last_saved and final_step >= 1:
            checkpoints.append(str(self.save_checkpoint(final_step)))
        self.write_metrics()
        self.save_adapters(self.out_dir)
        tail = self.metrics[-min(10, len(self.metrics)) :] if self.metrics else []

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in tail])) if tail else float("nan")

        return DomainResult(
            domain=self.domain,
            final_kd_loss=mean("kd"),
            final_ce_loss=mean("ce"),
            final_combined_loss=mean("combined"),
            training_time_seconds=elapsed,
            adapter_path=str(self.out_dir),
            steps=final_step,
            tokens=tokens_total,
            tokens_per_second=tokens_total / elapsed if elapsed > 0 else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            metrics_path=str(self.out_dir / "metrics.jsonl"),
            examples=len(self.examples),
            resumed_from=resumed_from,
            stopped=stopped,
            checkpoints=checkpoints,
        )


def tree_map_add(a: Any, b: Any) -> Any:
    from mlx.utils import tree_map

    return tree_map(lambda x, y: x + y, a, b)
