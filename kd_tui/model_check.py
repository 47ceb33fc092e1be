"""Check a model the user picked, without loading it (and never building the demo pair).

Plain file reads (config.json, safetensors headers): safe in a thread worker. No Textual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_core.errors import one_line
from kd_core.models import DEMO_NAMES, ModelError, ModelInfo, model_info, resolve_model

# The shipped pair (kd_core/demo/pair) is unpacked on first use in about a second; only when
# it is missing or damaged (or another recipe is asked for) is the pair trained, and training
# DemoRecipe() took 2140 s on the project's 2-core CPU (README, "The built-in default").
DEMO_TRAIN_TIME = "about 35 minutes on a 2-core CPU"
DEMO_PENDING = f"no usable shipped copy: first use trains it ({DEMO_TRAIN_TIME})"


@dataclass
class ModelCheck:
    name: str  # what the user picked (stored in the run spec)
    path: Path | None = None  # the local folder, once it exists
    info: ModelInfo | None = None
    error: str | None = None  # one line, when the model cannot be used
    note: str = ""  # e.g. the demo pair is not built yet

    @property
    def ok(self) -> bool:
        return self.error is None


def demo_built_path(name: str) -> Path | None:
    """Folder of a demo model if the pair is already built and intact, else None (no build)."""
    from kd_core.demo import built_demo_path

    return built_demo_path(name)


def check_model(name: str, role: str) -> ModelCheck:
    name = name.strip()
    if not name:
        return ModelCheck(
            name, error=f"{role}: type a model folder, a Hugging Face id or demo-{role}"
        )
    if name in DEMO_NAMES:
        try:
            path = demo_built_path(name)
        except Exception:  # an odd cache folder must not break the pane
            path = None
        if path is None:
            return ModelCheck(name, note=DEMO_PENDING)
        return ModelCheck(name, path, model_info(path))
    try:
        path = resolve_model(name, role)  # local folder or HF cache only: no download
        return ModelCheck(name, path, model_info(path))
    except ModelError as e:
        return ModelCheck(name, error=one_line(e))
    except Exception as e:  # a damaged config.json etc.: still one line
        return ModelCheck(name, error=f"{role}: {name}: {e.__class__.__name__}: {e}"[:200])


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def human_gb(gb: float) -> str:
    return f"~{gb:.1f} GB" if gb >= 1 else f"~{gb * 1000:.0f} MB" if gb >= 0.001 else "<1 MB"


def info_lines(check: ModelCheck) -> list[tuple[str, str]]:
    """(label, value) rows for the Models pane."""
    if check.error:
        return []
    if check.info is None:
        return [("model", check.name), ("status", check.note)]
    i = check.info
    return [
        ("family", i.family),
        ("parameters", f"{human_count(i.parameters)} ({i.layers} layers × {i.hidden_size})"),
        ("quantization", i.quantization),
        ("vocabulary", f"{i.vocab_size:,}"),
        (
            "memory",
            f"{human_gb(i.memory_estimate_gb())} to run · "
            f"{human_gb(i.memory_estimate_gb(training=True))} to train",
        ),
        ("folder", i.path),
    ]


def verdict_words(v: dict[str, Any]) -> tuple[str, str]:
    """(headline, detail) in plain words for a tokenizer verdict from the worker."""
    strategy = v.get("strategy")
    detail = str(v.get("explanation", ""))
    if strategy == "truncate" and v.get("identical"):
        return (
            "✓ The tokenizers agree: the student learns the teacher's distribution token "
            "for token.",
            detail,
        )
    if strategy == "truncate":
        return (
            "✓ Same tokenizer, different vocabulary sizes: compared over the ids both have "
            "(truncate).",
            detail,
        )
    if strategy == "project":
        return (
            "≈ Different tokenizers: teacher tokens are matched to student tokens by their "
            "text (project); tokens only the teacher has are left out.",
            detail,
        )
    if strategy == "none":
        return (
            "✗ These tokenizers share too little to distil; pick a student of the same "
            "model family.",
            detail,
        )
    return ("? Could not compare the tokenizers.", detail)
