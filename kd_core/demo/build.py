"""The built-in demo pair: a teacher that knows the six domains and a weaker student.

Both are llama models in mlx-lm's layout, trained here from scratch on text the project
generates (kd_core.demo.corpus: prompt/response pairs for every domain with structured
randomness, i.e. several plausible continuations with unequal probabilities — the dark
knowledge a teacher's distribution carries and a single sampled text does not). The teacher
is larger and trained longer; the student is smaller and sees a short slice of training, so
it knows the format but not the domains' distributions. Deterministic given the seed.

Built on first use into the user's cache folder (KD_CACHE_DIR overrides), verified by a
manifest of SHA-256 sums written last; a damaged or partial build is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_core.atomic_io import atomic_write_json
from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_tokenizer

MANIFEST = "manifest.json"
BUILD_VERSION = 1

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo pair; its hash names the cache folder."""

    seed: int = 0
    vocab_size: int = 1024
    # Sized so the first build fits in ~2.5 min on a 2-core CPU (measured: 128x4 at batch 16
    # takes ~0.42 s a step with OpenBLAS; MLX's CPU element-wise work dominates at this size).
    teacher: LlamaSize = field(default_factory=lambda: LlamaSize(128, 4, 384, 4))
    # Half the teacher's depth and a short slice of its training: weaker, but with room to
    # learn (a much smaller student could not get near the teacher whatever the method).
    student: LlamaSize = field(default_factory=lambda: LlamaSize(128, 2, 384, 4))
    teacher_steps: int = 260
    student_steps: int = 40
    batch_size: int = 16
    max_len: int = 128
    learning_rate: float = 3e-3
    samples_per_prompt: int = 6
    extra_prompts_per_domain: int = 200

    def key(self) -> str:
        blob = json.dumps({"v": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class DemoPair:
    teacher: Path
    student: Path
    folder: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def verify(folder: Path) -> bool:
    """True when the manifest exists and every file matches its checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        for rel, digest in files.items():
            if _sha256(folder / rel) != digest:
                return False
        return bool(files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _encode_examples(
    tok_folder: Path, triples: list[tuple[str, str, str]], max_len: int
) -> list[tuple[np.ndarray, int]]:
    """Token ids exactly as the engine will see them: chat-formatted prompt, response, EOS."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_folder / "tokenizer.json"))
    eos = tok.token_to_id("<|eos|>")
    prompts = [f"<|user|>\n{p}\n<|assistant|>\n" for _, p, _ in triples]
    p_ids = tok.encode_batch(prompts)
    r_ids = tok.encode_batch([r for _, _, r in triples])
    out = []
    for p, r in zip(p_ids, r_ids, strict=True):
        seq = np.array(p.ids + r.ids + [eos], np.int32)[:max_len]
        out.append((seq, len(p.ids)))
    return out


def _train(
    size: LlamaSize,
    vocab: int,
    data: list[tuple[np.ndarray, int]],
    steps: int,
    recipe: DemoRecipe,
    seed: int,
    report: Callable[[int], None],
) -> tuple[Any, dict]:
    """Plain CE language-model training on the responses (prompt tokens masked)."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    model, config = new_llama(size, vocab, seed)
    warm = max(1, steps // 10)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(recipe.learning_rate / warm, recipe.learning_rate, warm),
            optim.cosine_decay(
                recipe.learning_rate, max(1, steps - warm), recipe.learning_rate / 20
            ),
        ],
        [warm],
    )
    opt = optim.AdamW(learning_rate=schedule, weight_decay=0.01)

    def loss_fn(m, x, y, mask):
        logits = m(x).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, y) * mask
        return ce.sum() / mask.sum()

    vg = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y, mask):
        loss, grads = vg(model, x, y, mask)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for it in range(steps):
        idx = rng.integers(0, len(data), recipe.batch_size)
        # Pad to this batch's longest sequence (rounded up: few distinct shapes to compile).
        L = min(recipe.max_len - 1, -(-max(len(data[i][0]) - 1 for i in idx) // 16) * 16)
        x = np.zeros((recipe.batch_size, L), np.int32)
        y = np.zeros((recipe.batch_size, L), np.int32)
        mask = np.zeros((recipe.batch_size, L), np.float32)
        for b, i in enumerate(idx):
            seq, plen = data[i]
            n = len(seq) - 1
            x[b, :n], y[b, :n] = seq[:-1], seq[1:]
            mask[b, plen - 1 : n] = 1.0
        loss = step(mx.array(x), mx.array(y), mx.array(mask))
        mx.eval(loss, state)
        report(it + 1)
    return model, config


def build_demo_pair(
    folder: Path, recipe: DemoRecipe = DemoRecipe(), progress: ProgressFn | None = None
) -> DemoPair:
    """Build tokenizer, teacher and student into `folder` (replaced atomically at the end)."""
    from kd_core.demo.corpus import build_corpus

    progress = progress or (lambda what, done, total: None)
    total = recipe.teacher_steps + recipe.student_steps + 2
    tmp = folder.with_name(folder.name + f".building-{random.randrange(1 << 30):08x}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        triples = build_corpus(
            recipe.seed, recipe.samples_per_prompt, recipe.extra_prompts_per_domain
        )
        train_tokenizer((f"{p}\n{r}" for _, p, r in triples), recipe.vocab_size, tmp / "tokenizer")
        progress("tokenizer", 1, total)
        data = _encode_examples(tmp / "tokenizer", triples, recipe.max_len)
        eos = eos_id(tmp / "tokenizer")
        progress("corpus", 2, total)
        done = 2
        t_model, t_cfg = _train(
            recipe.teacher,
            recipe.vocab_size,
            data,
            recipe.teacher_steps,
            recipe,
            recipe.seed + 1,
            lambda i: progress("teacher", done + i, total),
        )
        save_model(t_model, t_cfg, tmp / "teacher", tmp / "tokenizer", eos)
        done += recipe.teacher_steps
        # The student sees a different, short slice of training: it learns the format,
        # not the domains' distributions.
        s_model, s_cfg = _train(
            recipe.student,
            recipe.vocab_size,
            data,
            recipe.student_steps,
            recipe,
            recipe.seed + 2,
            lambda i: progress("student", done + i, total),
        )
        save_model(s_model, s_cfg, tmp / "student", tmp / "tokenizer", eos)
        shutil.rmtree(tmp / "tokenizer")
        atomic_write_json(
            tmp / MANIFEST,
            {
                "recipe": asdict(recipe),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "files": {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)},
            },
        )
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoPair(folder / "teacher", folder / "student", folder)
