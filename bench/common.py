"""Shared pieces of the benchmark suite: model shapes, data, timing, machine facts.

This module must stay light: the orchestrator (bench/run.py) imports it and never imports MLX
or torch itself. Each side of a comparison runs in its own worker process (bench/worker.py),
so the two frameworks never share threads, BLAS libraries or an allocator.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class LlamaShape:
    """A llama as mlx-lm and Hugging Face both build it (head dim 64, tied embeddings)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int

    def config(self) -> dict[str, Any]:
        """config.json as both mlx_lm.load and transformers' LlamaForCausalLM read it."""
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "rms_norm_eps": 1e-5,
            "vocab_size": self.vocab,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "max_position_embeddings": 4096,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",
        }

    def matmul_params(self) -> int:
        """Parameters that take part in matmuls per token (blocks + LM head; not the lookup)."""
        d, f = self.hidden, self.intermediate
        return self.layers * (4 * d * d + 3 * d * f) + self.vocab * d


# The step-figure sizes: teacher 8 x 768, student 4 x 512, vocab 8192, batch 4 x 256.
# Intermediate sizes follow llama's ~8/3 ratio rounded to a multiple of 64; head dim 64.
TEACHER = LlamaShape(8, 768, 2048, 12, 8192)
STUDENT = LlamaShape(4, 512, 1408, 8, 8192)
# A second teacher for the offline-vs-online figure only. Real distillation pairs put far more
# parameters in the teacher than the pair does (3.7x matmul parameters here):
# Llama-3.1-8B -> 3.2-1B ~6.5x, Qwen2.5-7B -> 0.5B ~15x. This one is 9.4x the student's.
BIG_TEACHER = LlamaShape(12, 1024, 2816, 16, 8192)
# The large-vocabulary figure: a 2 x 256 student at Qwen's 151,936-token vocabulary.
LARGE_STUDENT = LlamaShape(2, 256, 704, 4, 151_936)

BATCH = 4
SEQ = 256  # positions the model reads per sequence (sequences hold SEQ + 1 tokens)
LARGE_SEQ = 512
PROMPT_LEN = 32  # masked prompt positions at the start of every sequence
LORA_RANK = 16
LORA_SCALE = 2.0  # mlx-lm's scale; peft's equivalent is lora_alpha = scale * rank
TEMPERATURE = 2.0
ALPHA = 0.7
TOP_K = 32  # KDConfig's default
LEARNING_RATE = 1e-4
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""mlx-lm 0.32's linear_to_lora_layers adapts every linear of a block; peft gets the same."""


def batch_tokens(vocab: int, seq: int = SEQ, batch: int = BATCH, seed: int = 0) -> np.ndarray:
    """The one batch every side trains on: [batch, seq + 1] int32 ids, reproducible by seed.

    Ids avoid 0..3 (the demo tokenizer's special tokens) so no EOS appears mid-sequence.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(4, vocab, size=(batch, seq + 1), dtype=np.int64).astype(np.int32)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON beside the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on (the MLX/torch parts come from their workers)."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def lora_params(shape: LlamaShape, rank: int = LORA_RANK) -> int:
    """LoRA parameters on every linear of every block: rank * (in + out) each."""
    d, f = shape.hidden, shape.intermediate
    return shape.layers * rank * (4 * 2 * d + 2 * (d + f) + (f + d))


def forward_flops(shape: LlamaShape, batch: int, seq: int) -> float:
    """2 FLOPs per matmul weight per token, plus attention's QK^T and PV (4 * B * T^2 * d per
    layer; the full T x T product, as scaled_dot_product_attention computes it)."""
    return 2.0 * shape.matmul_params() * batch * seq + 4.0 * shape.layers * batch * seq**2 * (
        shape.hidden
    )


def lora_train_flops(shape: LlamaShape, batch: int, seq: int) -> float:
    """FLOPs of one LoRA training step of `shape` (forward + backward).

    Frozen weights need the forward (2N per token) and the input gradient (2N), not a weight
    gradient: 4N per token, where the usual 6N counts full fine-tuning. The adapters get all
    three (6 per LoRA parameter per token). Attention: forward 4BT^2d per layer, backward
    twice that. Element-wise work (norms, softmax, the loss) is not counted.
    """
    tokens = batch * seq
    return (
        4.0 * shape.matmul_params() * tokens
        + 6.0 * lora_params(shape) * tokens
        + 12.0 * shape.layers * batch * seq**2 * shape.hidden
    )


FLOPS_FORMULA = (
    "LoRA step = 4*N*tokens (forward + input gradient through frozen weights; "
    "N = matmul weights incl. the tied LM head) + 6*N_lora*tokens + "
    "12*layers*B*T^2*d (attention fwd + bwd); element-wise work not counted"
)
