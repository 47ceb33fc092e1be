"""The PyTorch + Hugging Face side of the online-KD comparison (runs in its own worker).

The same work as kd's online step, written the way a PyTorch user would write it: the teacher
and student are transformers' LlamaForCausalLM loaded from the very folders the MLX side
loads (mlx-lm's keys are Hugging Face's, embeddings tied); the student gets peft LoRA of the
same rank and scale on the same linears of every block; per step the teacher runs a forward
under no_grad, the student a forward and backward, Adam updates the adapters. Loss exactly as
kd computes it (docs/ARCHITECTURE.md): L = alpha * T^2 * KL(P_T || Q_T) + (1 - alpha) * CE over the
response positions. Eager mode: what a Hugging Face training loop runs by default.

This module never imports kd_core: OpenBLAS must not be loaded into the torch process.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import (
    ALPHA,
    LEARNING_RATE,
    LORA_RANK,
    LORA_SCALE,
    LORA_TARGETS,
    PROMPT_LEN,
    STUDENT,
    TEMPERATURE,
    batch_tokens,
)


def torch_facts() -> dict[str, Any]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_threads": torch.get_num_threads(),
    }


class TorchKDStep:
    """Online KD step in PyTorch + transformers + peft, on the shared weights and batch."""

    def __init__(self, pair: str) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        torch.set_num_threads(os.cpu_count() or 1)  # the same threads MLX's OpenBLAS gets
        torch.manual_seed(0)
        self.teacher = self._load(f"{pair}/teacher", LlamaForCausalLM)
        self.teacher.eval().requires_grad_(False)
        base = self._load(f"{pair}/student", LlamaForCausalLM)
        lora = LoraConfig(
            r=LORA_RANK,
            lora_alpha=int(LORA_SCALE * LORA_RANK),
            lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
            bias="none",
        )
        self.student = get_peft_model(base, lora)
        self.student.train()
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
        tokens = torch.from_numpy(batch_tokens(STUDENT.vocab).astype(np.int64))
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]
        # Response positions: input position PROMPT_LEN - 1 predicts the first response token.
        self.mask = torch.zeros(self.inputs.shape, dtype=torch.float32)
        self.mask[:, PROMPT_LEN - 1 :] = 1.0

    @staticmethod
    def _load(path: str, cls: Any) -> Any:
        model, info = cls.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True
        )
        missing = [k for k in info["missing_keys"] if "lm_head" not in k]  # tied to embeddings
        if missing or info["unexpected_keys"]:
            raise RuntimeError(
                f"{path}: keys do not match Hugging Face's: missing {missing}, "
                f"unexpected {info['unexpected_keys']}"
            )
        return model

    def facts(self) -> dict[str, Any]:
        return {**torch_facts(), "trainable_params": self.trainable}

    def teacher_logits(self, path: str, n: int = 16) -> None:
        with torch.no_grad():
            out = self.teacher(self.inputs[:1, :n]).logits
        np.save(path, out.numpy())

    def _loss(self, t_logits: torch.Tensor, s_logits: torch.Tensor, alpha: float) -> torch.Tensor:
        m = self.mask
        n = m.sum()
        ce = (
            F.cross_entropy(s_logits.transpose(1, 2), self.targets, reduction="none") * m
        ).sum() / n
        if alpha == 0.0:
            return ce
        T = TEMPERATURE
        log_p = F.log_softmax(t_logits / T, dim=-1)
        log_q = F.log_softmax(s_logits / T, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        kd = T * T * (kl * m).sum() / n
        return alpha * kd + (1.0 - alpha) * ce

    def _step(self, alpha: float = ALPHA) -> float:
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if alpha > 0.0:
            with torch.no_grad():
                t_logits = self.teacher(self.inputs).logits
        else:
            t_logits = None
        s_logits = self.student(self.inputs).logits
        loss = self._loss(t_logits, s_logits, alpha)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - t0

    def steps(self, n: int) -> dict[str, Any]:
        """n + 1 steps, the first reported apart (allocator and thread-pool warm-up)."""
        times = [self._step() for _ in range(n + 1)]
        return {"warmup": times[0], "times": times[1:], "positions": int(self.inputs.numel())}

    def profile(self, repeats: int = 2) -> dict[str, float]:
        """Teacher forward alone and the student's CE-only step, best of `repeats`."""
        teacher = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                self.teacher(self.inputs)
            teacher.append(time.perf_counter() - t0)
        ce = [self._step(alpha=0.0) for _ in range(repeats)]
        return {"teacher_forward_s": min(teacher), "student_ce_step_s": min(ce)}
