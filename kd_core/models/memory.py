"""Pre-flight memory estimate: warn before a run that will not fit, and say what to change.

Rough on purpose (within a factor of ~1.5): weights from the safetensors sizes, activations
and logits from the shapes the config implies. Peak is what matters, so the teacher pass
and the student pass are estimated apart (offline mode never holds both models).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kd_core.config import KDConfig
from kd_core.generate import GEN_KV_BUDGET, GEN_MAX_BATCH
from kd_core.models.load import ModelInfo
from kd_core.teacher.teacher_pass import FWD_CHUNK

GB = 1e9


def machine_memory_bytes() -> int | None:
    """Memory the accelerator (Metal/CUDA) or, on CPU, the machine can give a run."""
    try:
        import mlx.core as mx

        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        size = info.get("memory_size") or info.get("total_memory")
        if size:
            return int(size)
    except Exception:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryEstimate:
    teacher_pass_gb: float
    student_pass_gb: float
    available_gb: float | None
    resident_teacher_gb: float = 0.0  # part of student_pass_gb: the teacher kept beside it

    def on_policy_refusal(self, cfg: KDConfig) -> str | None:
        """One line when an on-policy run (teacher resident beside the student) will not fit:
        such a run is refused rather than left to swap or be killed."""
        if cfg.on_policy_ratio <= 0 or self.available_gb is None:
            return None
        if self.student_pass_gb <= 0.9 * self.available_gb:
            return None
        return (
            f"on_policy_ratio: {cfg.on_policy_ratio:g} keeps the teacher in memory beside the "
            f"student (about {self.resident_teacher_gb:.1f} GB of the student pass's "
            f"{self.student_pass_gb:.1f} GB) but the machine has {self.available_gb:.1f} GB; "
            f"try a smaller batch_size (now {cfg.batch_size}) or max_seq_length (now "
            f"{cfg.max_seq_length}), a quantized teacher, or on_policy_ratio = 0"
        )

    @property
    def peak_gb(self) -> float:
        return max(self.teacher_pass_gb, self.student_pass_gb)

    def warning(self, cfg: KDConfig) -> str | None:
        """One line when the estimate exceeds what the machine has, with what to change."""
        if self.available_gb is None or self.peak_gb <= 0.9 * self.available_gb:
            return None
        tips = []
        if self.student_pass_gb >= self.teacher_pass_gb:
            if cfg.teacher_mode == "online":
                tips.append("teacher_mode = 'offline'")
            tips += [
                f"a smaller batch_size (now {cfg.batch_size}; grad_accumulation keeps the "
                "effective batch)",
                f"shorter max_seq_length (now {cfg.max_seq_length})",
            ]
        else:
            tips += [
                "a quantized teacher (e.g. a 4-bit mlx-community build)",
                f"fewer max_tokens (now {cfg.max_tokens})",
            ]
        return (
            f"memory: this run needs about {self.peak_gb:.1f} GB (teacher pass "
            f"{self.teacher_pass_gb:.1f} GB, student pass {self.student_pass_gb:.1f} GB) but "
            f"the machine has {self.available_gb:.1f} GB; try " + ", or ".join(tips)
        )


def estimate_memory(
    teacher: ModelInfo, student: ModelInfo, cfg: KDConfig, available: int | None = None
) -> MemoryEstimate:
    seq = cfg.max_seq_length
    gen_len = min(seq, cfg.max_tokens + 64)
    t_w = teacher.disk_bytes
    s_w = student.disk_bytes
    # Teacher pass: weights, the KV cache of a generation batch, the logits of a forward batch.
    kv_one = 2 * teacher.layers * teacher.hidden_size * gen_len * 2  # one sequence
    kv = min(GEN_KV_BUDGET, kv_one * GEN_MAX_BATCH)
    fwd = FWD_CHUNK * seq * (teacher.vocab_size * 4 * 3 + teacher.hidden_size * 4 * 8)
    teacher_gb = (t_w * 1.1 + kv + fwd) / GB
    # Student pass: weights, LoRA + Adam (small), activations kept for the backward pass,
    # full logits and their softmax / gradient (three [B, L, V] float32 tensors).
    tokens = cfg.batch_size * seq
    acts = tokens * student.hidden_size * student.layers * 4 * 12
    logits = tokens * student.vocab_size * 4 * 3
    student_gb = (s_w * 1.2 + acts + logits) / GB
    resident = 0.0
    if cfg.teacher_mode == "online" or cfg.on_policy_ratio > 0:
        resident = (t_w * 1.1 + tokens * teacher.vocab_size * 4 * 2) / GB
    if cfg.on_policy_ratio > 0:  # the student's KV cache while it samples the step's answers
        resident += 2 * student.layers * student.hidden_size * tokens * 2 / GB
    student_gb += resident
    avail = available if available is not None else machine_memory_bytes()
    return MemoryEstimate(teacher_gb, student_gb, avail / GB if avail else None, resident)
