"""Checkpoints of one domain's training: save, find the newest usable one, check it fits.

    <output>/<domain>/checkpoint_<step>/adapters.safetensors    LoRA weights
                                        optimizer.safetensors   Adam state
                                        adapter_config.json     mlx-lm's format
                                        trainer_state.json      written last: the commit mark

`trainer_state.json` also records the run's fingerprint (`run_fingerprint`): everything that
defines what the checkpoint's weights mean — the teacher and student (identity and weights
hash), the vocabulary alignment, the LoRA shape, the loss and data settings and the prompts.
`--resume` continues only when the fingerprint matches (ResumeError names the first field
that differs) and the saved tensors have exactly the student's adapter shapes. A checkpoint
that cannot be read (killed mid-save, a 0-byte file, a truncated state) is skipped with a
warning naming the file, and the next older one is used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from kd_core.config import KDConfig
from kd_core.errors import one_line
from kd_core.files.atomic import atomic_save_safetensors, atomic_write_json
from kd_core.models.identity import SHORT, ModelIdentity, pair_fields

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint

# KDConfig fields that change what a checkpoint's weights and optimiser state mean. Left out
# on purpose: num_iters (a resumed run may go on longer), reporting and saving intervals, the
# output folder, and the pure speed settings (cpu_streams, loss_chunk: same numbers).
FINGERPRINT_FIELDS = (
    "temperature",
    "alpha",
    "teacher_temperature",
    "max_tokens",
    "top_k",
    "teacher_mode",
    "vocab_strategy",
    "divergence",
    "jsd_beta",
    "skew",
    "on_policy_ratio",
    "student_temperature",
    "on_policy_divergence",
    "lora_rank",
    "lora_scale",
    "lora_dropout",
    "lora_layers",
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "batch_size",
    "grad_accumulation",
    "max_seq_length",
    "seed",
)


class ResumeError(ValueError):
    """--resume cannot continue from the checkpoint found (one line naming the field)."""


class DamagedCheckpoint(Exception):
    pass


def prompts_hash(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def run_fingerprint(
    cfg: KDConfig,
    *,
    teacher: ModelIdentity,
    student: ModelIdentity,
    vocab_strategy: str,
    prompts: list[str],
) -> dict[str, Any]:
    fp: dict[str, Any] = {
        **pair_fields(teacher, student),
        "vocab_alignment": vocab_strategy,
        "prompts": prompts_hash(prompts),
    }
    if vocab_strategy == "align":  # what an aligned pair compares changes the weights' story
        fp["align_targets"] = cfg.align_targets
    fp.update({k: getattr(cfg, k) for k in FINGERPRINT_FIELDS})
    if cfg.lr_schedule == "cosine":  # the schedule's length is then part of the weights' story
        fp["num_iters"] = cfg.num_iters
    return fp


# A model changed in place (same folder, new bytes): the message says which and the way out.
_CHANGED_IN_PLACE = {
    "teacher_weights": ("teacher", "weights"),
    "teacher_tokenizer": ("teacher", "tokenizer"),
    "student_weights": ("student", "weights"),
    "student_tokenizer": ("student", "tokenizer"),
}


def mismatch_message(folder: Path, key: str, then: Any, now: Any, saved: dict[str, Any]) -> str:
    """One line: why --resume cannot continue from the checkpoint in `folder`."""
    if key in _CHANGED_IN_PLACE:
        role, what = _CHANGED_IN_PLACE[key]
        was = "not recorded" if not then else str(then)[:SHORT]
        return (
            f"resume: the {role}'s {what} at {saved.get(role, '?')} changed since {folder} was "
            f"made (fingerprint {was} -> {str(now)[:SHORT]}); put the {role} it was made with "
            "back, or run without --resume (or into another --output folder) to start over"
        )
    return (
        f"resume: {folder} was made with {key} = {_show(then)} but this run has {key} = "
        f"{_show(now)}; use another --output folder for these settings, or run without "
        "--resume to start this one over"
    )


@dataclass
class Checkpoint:
    step: int
    folder: Path
    adapters: dict[str, mx.array]
    optimizer: dict[str, mx.array]
    state: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one domain's output folder."""

    def __init__(self, out_dir: Path, domain: str, fingerprint: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.domain = domain
        self.fingerprint = fingerprint

    def folders(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint folder, newest first."""
        found = []
        for d in self.out_dir.glob(f"{CHECKPOINT_PREFIX}*"):
            try:
                found.append((int(d.name[len(CHECKPOINT_PREFIX) :]), d))
            except ValueError:
                continue
        return sorted(found, reverse=True)

    def clear(self) -> None:
        for _, d in self.folders():
            shutil.rmtree(d, ignore_errors=True)

    def save(
        self,
        step: int,
        adapters: dict[str, mx.array],
        optimizer: dict[str, mx.array],
        adapter_cfg: dict[str, Any],
        metrics_rows: int,
    ) -> Path:
        folder = self.out_dir / f"{CHECKPOINT_PREFIX}{step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).unlink(missing_ok=True)
        atomic_save_safetensors(folder / "adapters.safetensors", adapters)
        atomic_write_json(folder / "adapter_config.json", adapter_cfg)
        atomic_save_safetensors(folder / "optimizer.safetensors", optimizer)
        # The state file is the commit marker: written last, so a checkpoint is either whole
        # (with its metrics already on disk) or skipped by `latest`.
        atomic_write_json(
            folder / STATE_FILE,
            {
                "step": step,
                "domain": self.domain,
                "metrics_rows": metrics_rows,
                "fingerprint": self.fingerprint,
            },
        )
        return folder

    def _read(self, step: int, folder: Path) -> Checkpoint:
        state_path = folder / STATE_FILE
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DamagedCheckpoint(f"{STATE_FILE} is missing (an unfinished save)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DamagedCheckpoint(f"{state_path} is unreadable ({one_line(e)})") from None
        if not isinstance(state, dict) or state.get("step") != step:
            raise DamagedCheckpoint(f"{state_path} does not name step {step}")
        arrays = []
        for name in ("adapters.safetensors", "optimizer.safetensors"):
            path = folder / name
            try:
                arrays.append(mx.load(str(path)))
            except Exception as e:
                raise DamagedCheckpoint(f"{path} is unreadable ({one_line(e)})") from None
        return Checkpoint(step, folder, arrays[0], arrays[1], state)

    def latest(
        self, shapes: dict[str, tuple[int, ...]], warn: Callable[[str], None]
    ) -> Checkpoint | None:
        """The newest readable checkpoint, checked against this run; None when there is none.
        Damaged ones are skipped (with a warning); one from another run raises ResumeError."""
        ck = self.newest_readable(warn)
        if ck is not None:
            self._check_fingerprint(ck)
            self._check_shapes(ck, shapes)
        return ck

    def newest_readable(self, warn: Callable[[str], None]) -> Checkpoint | None:
        """The checkpoint a resume would continue from (damaged ones skipped, with a warning)."""
        for step, folder in self.folders():
            try:
                return self._read(step, folder)
            except DamagedCheckpoint as e:
                warn(f"{self.domain}: skipped {folder.name}: {e}")
        return None

    def check_models(self) -> None:
        """Before any work of a resumed run: the newest checkpoint was made with these models
        (path, weights and tokenizer), so a model replaced in place is refused up front.
        (Damaged checkpoints are skipped quietly here; `latest` warns about them later.)"""
        ck = self.newest_readable(lambda _message: None)
        if ck is not None:
            keys = _CHANGED_IN_PLACE.keys() | {"teacher", "student"}
            self._check_fingerprint(ck, [k for k in self.fingerprint if k in keys])

    def _check_fingerprint(self, ck: Checkpoint, keys: list[str] | None = None) -> None:
        saved = ck.state.get("fingerprint")
        if not isinstance(saved, dict):
            # From before fingerprints: nothing says which models made it, so it cannot be
            # shown to fit this run.
            saved = {}
        for key in keys if keys is not None else list(self.fingerprint):
            then, now = saved.get(key), self.fingerprint[key]
            if then != now:
                raise ResumeError(mismatch_message(ck.folder, key, then, now, saved))

    @staticmethod
    def _check_shapes(ck: Checkpoint, shapes: dict[str, tuple[int, ...]]) -> None:
        saved = {k: tuple(v.shape) for k, v in ck.adapters.items()}
        for key in sorted(set(saved) | set(shapes)):
            if saved.get(key) != shapes.get(key):
                raise ResumeError(
                    f"resume: {ck.folder}/adapters.safetensors does not fit this student "
                    f"({key}: saved {saved.get(key)}, expected {shapes.get(key)}); use "
                    "another --output folder"
                )


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
