"""The student pass: LoRA training of one domain against the teacher's distributions.

Loss per optimiser step (docs/ARCHITECTURE.md):  L = alpha * KD + (1 - alpha) * CE, each a
*sum* over the valid response tokens of the whole step divided by their count. That count is
known on the host before the step runs (masks are built in numpy), so it enters the step as a
scalar. How a micro-batch's loss and gradient are computed (offline, online, chunked; row
shards over CPU streams) is the step's business: kd_core/steps/fused.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from kd_core.config import KDConfig
from kd_core.errors import TeacherGone, one_line
from kd_core.events import CheckpointSaved, DomainResult, EventSink, Log, Paused, Step, null_sink
from kd_core.examples.batch import BatchPlan, Example, make_batch, valid_tokens
from kd_core.files.atomic import atomic_save_safetensors, atomic_write_json, atomic_write_jsonl
from kd_core.models.load import vocab_size
from kd_core.remote.step_targets import RemoteStepTargets
from kd_core.remote.transport import RemoteTeacherError
from kd_core.run.control import RunControl
from kd_core.run.outputs import lora_parameters
from kd_core.runtime.cpu_streams import StreamSet, stream_count
from kd_core.runtime.distributed import World
from kd_core.runtime.distributed import world as get_world
from kd_core.steps.fused import StepOutput, TrainStep, make_step, policy_config
from kd_core.train.checkpoints import CheckpointStore
from kd_core.train.on_policy import SampleStats, StudentSampler, is_on_policy_step
from kd_core.vocab.plan import VocabAlignment

METRICS_FILE = "metrics.jsonl"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and what to change."""


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


@dataclass
class StepRecord:
    """One optimiser step's figures (a metrics.jsonl row)."""

    step: int
    kd: float
    ce: float
    combined: float
    lr: float
    tokens: int
    step_time: float
    elapsed_s: float
    on_policy: bool = False  # the student sampled this step's responses
    sample_s: float = 0.0  # ... in this many seconds (part of step_time)
    sample_tokens: int = 0
    teacher_s: float = 0.0  # a remote teacher scoring this step (part of step_time)
    teacher_tokens: int = 0  # ... these positions

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
        fingerprint: dict[str, Any],  # checkpoints.run_fingerprint: required, never guessed
        sampler: StudentSampler | None = None,
        remote: RemoteStepTargets | None = None,
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
        self.world = world or get_world()
        if cfg.batch_size < self.world.size:
            raise ValueError(
                f"batch_size: {cfg.batch_size} is fewer than the "
                f"{self.world.size} processes; use at least one per process"
            )
        self.plan = BatchPlan(len(examples), cfg.batch_size, cfg.seed)
        self.optimizer = optim.Adam(learning_rate=build_schedule(cfg))
        self.online = cfg.teacher_mode == "online" and teacher is not None
        # A remote teacher (kd_core/remote/step_targets.py): online and on-policy steps get
        # the server's top-k targets before the step and train as offline steps.
        self.remote = remote
        self.teacher, self.alignment = teacher, alignment
        # On-policy steps (cfg.on_policy_ratio) need the sampler and the teacher.
        self.sampler = sampler if cfg.on_policy_ratio > 0 else None
        if self.sampler is not None and teacher is None and remote is None:
            raise ValueError("on_policy_ratio: on-policy steps need the teacher in memory")
        self.policy_step: TrainStep | None = None
        self.checkpoints = CheckpointStore(out_dir, domain, fingerprint)
        self.metrics: list[dict[str, Any]] = []
        # KD_VERIFY_SYNC=1: check every step that all ranks hold identical weights (tests).
        self.verify_sync = self.world.distributed and os.environ.get("KD_VERIFY_SYNC") == "1"

    def _make_step(self) -> TrainStep:
        cfg = self.cfg
        rows = max(1, cfg.batch_size // self.world.size)  # sequences per micro-batch per rank
        streams = StreamSet(stream_count(cfg.cpu_streams, rows, self.world.distributed))
        if self.sampler is not None and self.remote is not None:
            self.policy_step = make_step(
                self.model,
                self.optimizer,
                policy_config(cfg),
                streams,
                alignment=self.alignment,
                reduce=self.world.sum_tree,
                vocab=vocab_size(self.model),
            )
        elif self.sampler is not None:
            assert self.teacher is not None
            self.policy_step = make_step(
                self.model,
                self.optimizer,
                cfg,
                streams,
                teacher=self.teacher,
                alignment=self.alignment,
                reduce=self.world.sum_tree,
                on_policy=True,
            )
        return make_step(
            self.model,
            self.optimizer,
            cfg,
            streams,
            teacher=self.teacher if self.online else None,
            alignment=self.alignment,
            reduce=self.world.sum_tree,
            vocab=0 if self.online else vocab_size(self.model),
            warn=lambda m: self.sink(Log(f"{self.domain}: {m}", "warning")),
        )

    # ---- outputs --------------------------------------------------------------------------
    def _adapter_weights(self) -> dict[str, mx.array]:
        return dict(tree_flatten(self.model.trainable_parameters()))

    def save_adapters(self, folder: Path) -> None:
        if not self.world.is_main:
            return
        atomic_save_safetensors(folder / "adapters.safetensors", self._adapter_weights())
        atomic_write_json(folder / "adapter_config.json", self.adapter_cfg)

    def save_checkpoint(self, step: int) -> Path:
        if not self.world.is_main:  # one writer: rank 0
            return self.out_dir / f"checkpoint_{step}"
        self.write_metrics()  # before the checkpoint's commit mark: it covers these rows
        folder = self.checkpoints.save(
            step,
            self._adapter_weights(),
            dict(tree_flatten(self.optimizer.state)),
            self.adapter_cfg,
            len(self.metrics),
        )
        self.sink(CheckpointSaved(self.domain, step, str(folder)))
        return folder

    def write_metrics(self) -> None:
        if self.world.is_main:
            atomic_write_jsonl(self.out_dir / METRICS_FILE, self.metrics)

    def _read_metrics(self, up_to: int) -> list[dict[str, Any]]:
        """metrics.jsonl rows of steps <= up_to; unreadable lines are skipped, not fatal."""
        path = self.out_dir / METRICS_FILE
        if not path.exists():
            return []
        rows = []
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= up_to:
                rows.append(row)
        return rows

    # ---- resume ---------------------------------------------------------------------------
    def _resume(self) -> int | None:
        """Load the newest usable checkpoint (rank 0 reads, every rank gets it): its step."""
        found = None
        if self.world.is_main:
            shapes = {k: tuple(v.shape) for k, v in self._adapter_weights().items()}
            found = self.checkpoints.latest(shapes, lambda m: self.sink(Log(m, "warning")))
        step = self.world.broadcast_int(found.step if found else -1)
        if step < 0:
            return None
        if found is not None:
            self.model.load_weights(list(found.adapters.items()), strict=False)
            self.optimizer.state = tree_unflatten(list(found.optimizer.items()))
            mx.eval(self.model.parameters(), self.optimizer.state)
            self.metrics = self._read_metrics(step)
            self.sink(Log(f"{self.domain}: resumed from {found.folder.name}"))
        if self.world.distributed:
            self.model.update(self.world.broadcast_tree(self.model.trainable_parameters()))
            self.optimizer.state = self.world.broadcast_tree(self.optimizer.state)
        return step

    # ---- the loop -------------------------------------------------------------------------
    def train(self, resume: bool = False) -> DomainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.optimizer.init(self.model.trainable_parameters())
        resumed_from = self._resume() if resume else None
        if not resume and self.world.is_main:
            self.checkpoints.clear()
        # Built after the optimiser state is final: the compiled step captures that state.
        self.step_fn = self._make_step()
        self.model.train()
        mx.reset_peak_memory()
        with self.step_fn.streams.active():
            return self._loop(resumed_from)

    def _loop(self, resumed_from: int | None) -> DomainResult:
        checkpoints: list[str] = []
        last_saved = resumed_from or 0
        step = last_saved
        stopped = False
        while step < self.cfg.num_iters:
            if self._stop_requested(step):
                stopped = True
                break
            step += 1
            try:
                record = self._train_step(step, last_saved)
            except RemoteTeacherError as e:
                raise self._teacher_gone(step - 1, last_saved, e) from None
            self.metrics.append(record.to_row())
            self.sink(self._step_event(record))
            if step % self.cfg.steps_per_save == 0 or step == self.cfg.num_iters:
                checkpoints.append(str(self.save_checkpoint(step)))
                last_saved = step
            elif step % self.cfg.steps_per_report == 0:
                self.write_metrics()
        if stopped and step > last_saved:
            checkpoints.append(str(self.save_checkpoint(step)))
        self.write_metrics()
        self.save_adapters(self.out_dir)
        return self._result(step, resumed_from, stopped, checkpoints)

    def _teacher_gone(self, done: int, last_saved: int, e: RemoteTeacherError) -> TeacherGone:
        """The remote teacher failed before step done + 1 changed anything (its targets are
        fetched first): checkpoint the `done` steps, so --resume continues exactly here."""
        if done > last_saved:
            self.save_checkpoint(done)
        self.write_metrics()
        return TeacherGone(
            f"{self.domain}: {one_line(e)}; stopped after step {done} with a checkpoint: "
            "run again with --resume once the teacher is back"
        )

    def _stop_requested(self, done: int) -> bool:
        if self.control.paused:
            self.sink(Paused(True, self.domain, done))
            self.control.wait_while_paused()
            self.sink(Paused(False, self.domain, done))
        stop = self.control.stop_requested
        if self.world.distributed:  # rank 0 decides, or the others would wait forever
            stop = bool(self.world.broadcast_int(int(stop)))
        return stop

    def _plan_step(self, step: int) -> tuple[list[list[Example]], int, SampleStats | None]:
        """This rank's micro-batches of `step`, the valid tokens of the whole step (all
        micro-batches, all ranks) and, on an on-policy step, the sampling's figures (the
        examples are then the student's own answers to the same prompts)."""
        cfg = self.cfg
        accum = cfg.grad_accumulation
        step_idx = [self.plan.indices(step, m, accum) for m in range(accum)]
        micro = [[self.examples[i] for i in self.world.share(idx)] for idx in step_idx]
        if self.sampler is None or not is_on_policy_step(step, cfg.on_policy_ratio):
            n_tok = sum(
                valid_tokens(self.examples[i], cfg.max_seq_length) for idx in step_idx for i in idx
            )
            return micro, n_tok, None
        micro, stats = self.sampler.sample(micro)
        n_tok = sum(valid_tokens(e, cfg.max_seq_length) for m in micro for e in m)
        if self.world.distributed:  # each rank sampled its own share: the count is global
            n_tok = int(self.world.all_sum(mx.array(n_tok)).item())
            stats.tokens = int(self.world.all_sum(mx.array(stats.tokens)).item())
        return micro, n_tok, stats

    def _train_step(self, step: int, last_saved: int) -> StepRecord:
        cfg = self.cfg
        tic = time.perf_counter()
        # Randomness (LoRA dropout, on-policy sampling) is a function of (seed, step): a
        # resumed run draws exactly what an uninterrupted one would, with no RNG state to save.
        mx.random.seed((cfg.seed << 20) + step)
        micro, n_tok, sampled = self._plan_step(step)
        step_fn = self.step_fn if sampled is None else self.policy_step
        assert step_fn is not None
        remote_before = (self.remote.positions, self.remote.seconds) if self.remote else (0, 0.0)
        if self.remote is not None:  # before any update: a failure here changes nothing
            micro = self.remote.fill(micro)
        inv = mx.array(1.0 / max(n_tok, 1), dtype=mx.float32)
        total = StepOutput(mx.array(0.0), mx.array(0.0), mx.array(0.0), None)
        for m, mine in enumerate(micro):
            out = step_fn(
                make_batch(mine, cfg.max_seq_length), inv, total.grad, m == len(micro) - 1
            )
            total = StepOutput(
                total.loss + out.loss, total.kd + out.kd, total.ce + out.ce, out.grad
            )
        sums = mx.stack([total.loss, total.kd, total.ce])
        if self.world.distributed:
            sums = self.world.all_sum(sums)
        mx.eval(sums, self.model.state, self.optimizer.state)
        if self.verify_sync:
            self.world.check_same(
                sum(v.astype(mx.float32).sum() for v in self._adapter_weights().values()),
                f"weights at step {step}",
            )
        dt = time.perf_counter() - tic
        loss, kd_sum, ce_sum = (float(x) for x in sums.tolist())
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{self.domain}: loss became {loss} at step {step}; kept the last good "
                f"checkpoint (step {last_saved}); lower learning_rate (now "
                f"{cfg.learning_rate:g}) or temperature, or check the data"
            )
        denom = max(n_tok, 1)
        elapsed = (self.metrics[-1]["elapsed_s"] if self.metrics else 0.0) + dt
        lr = float(self.optimizer.learning_rate.item())
        record = StepRecord(step, kd_sum / denom, ce_sum / denom, loss, lr, n_tok, dt, elapsed)
        if sampled is not None:
            record.on_policy, record.sample_s = True, sampled.seconds
            record.sample_tokens = sampled.tokens
        if self.remote is not None:
            record.teacher_tokens = self.remote.positions - remote_before[0]
            record.teacher_s = self.remote.seconds - remote_before[1]
        return record

    def _step_event(self, r: StepRecord) -> Step:
        eta = r.elapsed_s / max(1, r.step) * (self.cfg.num_iters - r.step)
        return Step(
            domain=self.domain,
            step=r.step,
            total_steps=self.cfg.num_iters,
            kd=r.kd,
            ce=r.ce,
            combined=r.combined,
            lr=r.lr,
            tokens=r.tokens,
            tokens_per_second=r.tokens / r.step_time if r.step_time > 0 else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            elapsed_s=r.elapsed_s,
            eta_s=eta,
            on_policy=r.on_policy,
            sample_tokens_per_second=r.sample_tokens / r.sample_s if r.sample_s > 0 else 0.0,
            teacher_tokens_per_second=r.teacher_tokens / r.teacher_s if r.teacher_s > 0 else 0.0,
        )

    def _result(
        self, step: int, resumed_from: int | None, stopped: bool, checkpoints: list[str]
    ) -> DomainResult:
        tail = self.metrics[-min(10, len(self.metrics)) :] if self.metrics else []

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in tail])) if tail else float("nan")

        elapsed = sum(r.get("step_time", 0.0) for r in self.metrics)
        tokens = sum(r.get("tokens", 0) for r in self.metrics)
        return DomainResult(
            domain=self.domain,
            final_kd_loss=mean("kd"),
            final_ce_loss=mean("ce"),
            final_combined_loss=mean("combined"),
            training_time_seconds=elapsed,
            adapter_path=str(self.out_dir),
            steps=step,
            tokens=tokens,
            tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            metrics_path=str(self.out_dir / METRICS_FILE),
            examples=len(self.examples),
            resumed_from=resumed_from,
            stopped=stopped,
            checkpoints=checkpoints,
        )
