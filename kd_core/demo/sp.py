"""demo-student-sp: the demo student with a SentencePiece-style tokenizer of its own.

Cross-tokenizer distillation (vocab_strategy "project" / "align") needs a student that does
not share the teacher's tokenizer. This one is demo-student in every other way: the same
LlamaSize, the same training text (corpus.echo_corpus of the demo corpus: it knows the demo
language's words and copies from its prompt, but does not know the task), the same
optimiser and number of steps. Only the tokenizer differs (tiny.train_sp_tokenizer): U+2581
word marker, byte fallback, 512 ids (half the teacher's 1024, 256 of them byte tokens), so it
cuts the same text into ~1.5x as many tokens; `max_len` grows by as much so that it trains on
the same characters (at 128 tokens 26% of its examples would be cut; at 192, 1%).

Deterministic given its recipe. Training it took 1167 s on the project's shared 2-core CPU
(0.46-1.9 s/step as the load varied), far longer than a first use should wait, so the default
recipe's student ships float16 in kd_core/demo/student_sp with its SHA-256 manifest (see
kd_core.demo); `python -m kd_core.demo.sp [OUT]` regenerates it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kd_core.demo.build import (
    DemoRecipe,
    ProgressFn,
    encode_examples,
    rebuild_main,
    replace_folder,
    save_demo_model,
    train_lm,
    write_manifest,
)
from kd_core.demo.corpus import build_corpus, echo_corpus
from kd_core.demo.tiny import SP_BYTE_TOKENS, SPECIAL_TOKENS, eos_id, train_sp_tokenizer

SP_NAME = "demo-student-sp"
SP_BUILD_VERSION = 1
SP_FOLDER = "student"  # the model's folder inside a built (or shipped) folder


@dataclass(frozen=True)
class SpRecipe:
    """Everything that decides demo-student-sp; its hash names the cache folder. The student's
    size, steps, data and optimiser come from `base` (the demo pair's recipe)."""

    base: DemoRecipe = field(default_factory=DemoRecipe)
    vocab_size: int = 512
    max_len: int = 192  # 1.5 x base.max_len: this tokenizer needs ~1.5x the tokens per text

    def __post_init__(self) -> None:
        least = len(SPECIAL_TOKENS) + len(SP_BYTE_TOKENS) + 64
        if self.vocab_size < least:
            raise ValueError(
                f"vocab_size: {self.vocab_size} leaves no room for word pieces beside the "
                f"byte and special tokens (at least {least})"
            )
        if self.max_len < 16:
            raise ValueError(f"max_len: {self.max_len} is too short (at least 16)")

    def key(self) -> str:
        blob = json.dumps({"v": SP_BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return "sp-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_sp_student(
    folder: Path, recipe: SpRecipe = SpRecipe(), progress: ProgressFn | None = None
) -> Path:
    """Tokenizer and student into `folder`/student, with a manifest (the folder is replaced
    atomically at the end). Weights in recipe.base.dtype (float16), as the pair's."""
    base = recipe.base
    progress = progress or (lambda what, done, total: None)
    total = base.student_steps + 2
    tmp = folder.with_name(folder.name + f".building-{random.randrange(1 << 30):08x}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        triples = build_corpus(base.seed, base.samples_per_prompt, base.extra_prompts_per_domain)
        # Trained on the text the demo tokenizer is trained on: the same language, cut otherwise.
        tok = tmp / "tokenizer"
        train_sp_tokenizer((f"{p}\n{r}" for _, p, r in triples), recipe.vocab_size, tok)
        progress("tokenizer", 1, total)
        # demo-student's text (see build_demo_pair): the words and copying, not the domains
        text = echo_corpus(triples, base.seed) if base.student_data == "echo" else triples
        data = encode_examples(tok, text, recipe.max_len)
        progress("corpus", 2, total)
        train_recipe = replace(base, max_len=recipe.max_len)
        model, config = train_lm(
            base.student,
            recipe.vocab_size,
            data,
            base.student_steps,
            train_recipe,
            base.seed + 2,  # demo-student's seed: the same initial draw
            lambda i: progress("student-sp", 2 + i, total),
        )
        save_demo_model(model, config, tmp / SP_FOLDER, tok, eos_id(tok), base)
        shutil.rmtree(tok)
        write_manifest(tmp, {"recipe": asdict(recipe), "key": recipe.key()})
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / SP_FOLDER


def main() -> int:
    """python -m kd_core.demo.sp [OUT]: regenerate the shipped student (default
    kd_core/demo/student_sp)."""
    import kd_core  # noqa: F401  (fast BLAS before MLX)

    here = Path(__file__).resolve().parent
    return rebuild_main(
        lambda out, report: build_sp_student(out, SpRecipe(), report), here / "student_sp"
    )


if __name__ == "__main__":
    raise SystemExit(main())
