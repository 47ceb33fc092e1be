"""The built-in demo pair: a teacher that writes the six domains well and a weaker student.

Both are llama models in mlx-lm's layout, trained here from scratch with a byte-level BPE
tokenizer trained here too. The teacher learns the text the project generates
(kd_core.demo.corpus: prompt/response pairs for every domain with structured randomness, i.e.
several plausible continuations with unequal probabilities — the dark knowledge a teacher's
distribution carries and a single sampled text does not). The student, about half its size,
learns only the same words and to copy from its prompt (corpus.echo_corpus), the way a small
pretrained model knows a language but not the task: what distillation then teaches it.
Deterministic given the recipe (bit for bit on the same CPU and BLAS).

The weights are written as float16 with a manifest of SHA-256 sums written last; the default
recipe's pair ships in kd_core/demo/pair (see kd_core.demo), others are built on first use.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_core.demo.corpus import build_corpus, echo_corpus
from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_tokenizer
from kd_core.files.atomic import atomic_write_json

MANIFEST = "manifest.json"
BUILD_VERSION = 2

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo pair; its hash names the cache folder."""

    seed: int = 0
    vocab_size: int = 1024
    # 1.0 M parameters. 1200 steps (~5 passes over the corpus, 20-30 min on one CPU core) take
    # its valid-3-gram share on the held-out prompts to 0.93-0.99 (260 steps: 0.14-0.37, the
    # garbled teacher of issue 14; 800 steps: 0.87-0.93).
    teacher: LlamaSize = field(default_factory=lambda: LlamaSize(128, 4, 384, 4))
    teacher_steps: int = 1200
    # 0.56 M parameters: half the teacher's depth, trained on echo_corpus only, so it knows
    # the tokens and copies from the prompt but writes no domain's language (share 0.02-0.20).
    student: LlamaSize = field(default_factory=lambda: LlamaSize(128, 2, 384, 4))
    student_steps: int = 1500
    student_data: str = "echo"  # or "corpus": the teacher's text (a short slice of it)
    batch_size: int = 16
    max_len: int = 128
    learning_rate: float = 3e-3
    samples_per_prompt: int = 6
    extra_prompts_per_domain: int = 200
    dtype: str = "float16"  # of the written weights; unpack() makes the float32 copy in use

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


def encode_examples(
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


def train_lm(
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


def save_demo_model(
    model: Any, config: dict, folder: Path, tok: Path, eos: int, recipe: DemoRecipe
) -> None:
    save_model(model, config, folder, tok, eos, dtype=recipe.dtype)


def build_demo_pair(
    folder: Path, recipe: DemoRecipe = DemoRecipe(), progress: ProgressFn | None = None
) -> DemoPair:
    """Build tokenizer, teacher and student into `folder` (replaced atomically at the end).

    The weights are written in recipe.dtype (float16: the form shipped in the repository);
    `unpack` makes the float32 copy that is used (MLX's CPU matmul is ~20x slower in float16).
    """
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
        data = encode_examples(tmp / "tokenizer", triples, recipe.max_len)
        eos = eos_id(tmp / "tokenizer")
        progress("corpus", 2, total)
        done = 2
        t_model, t_cfg = train_lm(
            recipe.teacher,
            recipe.vocab_size,
            data,
            recipe.teacher_steps,
            recipe,
            recipe.seed + 1,
            lambda i: progress("teacher", done + i, total),
        )
        save_demo_model(t_model, t_cfg, tmp / "teacher", tmp / "tokenizer", eos, recipe)
        done += recipe.teacher_steps
        # The student learns the words and to copy, not the domains (see echo_corpus).
        if recipe.student_data == "echo":
            data = encode_examples(
                tmp / "tokenizer", echo_corpus(triples, recipe.seed), recipe.max_len
            )
        s_model, s_cfg = train_lm(
            recipe.student,
            recipe.vocab_size,
            data,
            recipe.student_steps,
            recipe,
            recipe.seed + 2,
            lambda i: progress("student", done + i, total),
        )
        save_demo_model(s_model, s_cfg, tmp / "student", tmp / "tokenizer", eos, recipe)
        shutil.rmtree(tmp / "tokenizer")
        write_manifest(tmp, {"recipe": asdict(recipe), "key": recipe.key()})
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoPair(folder / "teacher", folder / "student", folder)


def write_manifest(folder: Path, extra: dict[str, Any]) -> None:
    # written last: a folder without a complete manifest is never trusted (see verify)
    files = {str(p.relative_to(folder)): _sha256(p) for p in _files(folder)}
    atomic_write_json(folder / MANIFEST, {**extra, "files": files})


def replace_folder(tmp: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def unpack(src: Path, folder: Path) -> DemoPair:
    """The float32 working copy of a built (or shipped) pair; exact, about a second."""
    import mlx.core as mx

    tmp = folder.with_name(folder.name + f".unpacking-{random.randrange(1 << 30):08x}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in manifest(src)["files"]:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".safetensors"):
                weights = {k: v.astype(mx.float32) for k, v in mx.load(str(src / rel)).items()}
                mx.save_safetensors(str(out), weights, metadata={"format": "mlx"})
            else:
                shutil.copyfile(src / rel, out)
        write_manifest(tmp, {"unpacked_from": manifest(src).get("key"), "source": str(src)})
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoPair(folder / "teacher", folder / "student", folder)


def differences(a: Path, b: Path) -> list[str]:
    """Files whose SHA-256 differs between two built pairs' manifests (or that one lacks)."""
    fa, fb = manifest(a).get("files", {}), manifest(b).get("files", {})
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def rebuild_main(build: Callable[[Path, ProgressFn], Any], default: Path) -> int:
    """The `python -m` command line of a shipped demo model: build into argv[1] (default
    `default`), printing progress every 100 steps."""
    import sys
    import time

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    start = time.time()

    def report(what: str, done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"{what} {done}/{total} {time.time() - start:.0f} s", flush=True)

    build(out, report)
    print(f"built {out} in {time.time() - start:.0f} s")
    return 0
