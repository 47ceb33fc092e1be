"""Build small llama models and their tokenizer locally, in the layout mlx_lm.load reads.

Used by the built-in demo pair and by the tests: no hub, no download. The tokenizers are
trained by the `tokenizers` library: the pair's byte-level BPE, or a SentencePiece-style one
(demo-student-sp's), each saved as tokenizer.json with a tokenizer_config.json
(PreTrainedTokenizerFast) and the same small chat template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% if m['role'] == 'assistant' %}<|eos|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, folder: Path) -> None:
    """Byte-level BPE on `texts`, written as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    write_tokenizer(tok, folder)


# Llama's decoder: mlx-lm recognises it and streams with its SentencePiece detokenizer, the
# path a real SentencePiece student (Llama, Mistral) takes; `Strip` drops the one space the
# Metaspace pre-tokenizer put before the first word.
SP_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
}
SP_BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_sp_tokenizer(texts: Iterable[str], vocab_size: int, folder: Path) -> None:
    """A SentencePiece-style BPE (as Llama's tokenizer.json): U+2581 word marker (Metaspace),
    byte fallback (`<0x00>`..`<0xFF>` in the vocabulary, so any text encodes), the demo
    tokenizer's special tokens and chat template. Ids: specials, the 256 byte tokens, then
    the learned pieces; `vocab_size` counts all of them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    n_fixed = len(SPECIAL_TOKENS) + len(SP_BYTE_TOKENS)
    if vocab_size < n_fixed + 64:
        raise ValueError(
            f"vocab_size: {vocab_size} leaves no room for word pieces beside the "
            f"{n_fixed} special and byte tokens (use at least {n_fixed + 64})"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SP_BYTE_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # The trainer cannot add the byte tokens as ordinary (non-special) vocabulary entries, as
    # SentencePiece has them: insert them after the specials and shift the learned pieces.
    spec = json.loads(tok.to_str())
    learned: dict[str, int] = spec["model"]["vocab"]
    n_special = len(SPECIAL_TOKENS)
    vocab = {t: i for t, i in learned.items() if i < n_special}
    vocab.update({t: n_special + b for b, t in enumerate(SP_BYTE_TOKENS)})
    vocab.update({t: i + len(SP_BYTE_TOKENS) for t, i in learned.items() if i >= n_special})
    spec["model"].update(vocab=vocab, byte_fallback=True, fuse_unk=True)
    spec["decoder"] = SP_DECODER
    write_tokenizer(Tokenizer.from_str(json.dumps(spec)), folder)


def write_tokenizer(tok: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


@dataclass
class LlamaSize:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int | None = None

    def args(self, vocab_size: int) -> dict[str, Any]:
        return {
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads or self.num_attention_heads,
            "rms_norm_eps": 1e-5,
            "vocab_size": vocab_size,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "max_position_embeddings": 4096,
        }


def new_llama(size: LlamaSize, vocab_size: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """A freshly initialised mlx-lm llama and its config.json dict."""
    import mlx.core as mx
    from mlx_lm.models.llama import Model, ModelArgs

    config = size.args(vocab_size)
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model, config


def save_model(
    model: Any,
    config: dict[str, Any],
    folder: Path,
    tokenizer_folder: Path,
    eos_token_id: int,
    dtype: str | None = None,
) -> None:
    """model.safetensors (in `dtype`, e.g. "float16", if given) + config.json + the tokenizer
    files, as mlx_lm.load expects."""
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    if dtype:
        weights = {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(
        json.dumps({**config, "eos_token_id": eos_token_id}, indent=2)
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_folder / name).resolve() != (folder / name).resolve():
            shutil.copy(tokenizer_folder / name, folder / name)


def eos_id(tokenizer_folder: Path) -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json")).token_to_id("<|eos|>"))
