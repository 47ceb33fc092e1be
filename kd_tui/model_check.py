"""Check a model the user picked, without loading it (and never building the demo pair).

Plain file reads (config.json, safetensors headers, kd_summary.json): safe in a thread
worker. No Textual.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_core.errors import one_line
from kd_core.files.user_dirs import default_cache_dir
from kd_core.models.load import DEMO_NAMES, ModelError, ModelInfo, model_info, resolve_model
from kd_core.remote.connect import connect_teacher, remote_model_info, teacher_token
from kd_core.remote.transport import RetryPolicy
from kd_core.run.outputs import SUMMARY_FILE
from kd_core.teacher_address import address_error, is_remote

# The shipped pair (kd_core/demo/pair) is unpacked on first use in about a second; only when
# it is missing or damaged (or another recipe is asked for) is the pair trained, and training
# DemoRecipe() took 2140 s on the project's 2-core CPU (README, "The built-in default").
DEMO_TRAIN_TIME = "about 35 minutes on a 2-core CPU"
DEMO_PENDING = f"no usable shipped copy: first use trains it ({DEMO_TRAIN_TIME})"


@dataclass(frozen=True)
class RemoteFacts:
    """What a teacher server reported (kd_core/remote/connect.py)."""

    url: str
    api: str
    model: str
    vocab_size: int
    fingerprint: str
    latency_ms: float


@dataclass
class ModelCheck:
    name: str  # what the user picked (stored in the run spec)
    path: Path | None = None  # the local folder, once it exists (remote: its tokenizer's)
    info: ModelInfo | None = None
    error: str | None = None  # one line, when the model cannot be used
    note: str = ""  # e.g. the demo pair is not built yet
    remote: RemoteFacts | None = None  # a teacher behind a server's address

    @property
    def ok(self) -> bool:
        return self.error is None


def demo_built_path(name: str) -> Path | None:
    """Folder of a demo model if the pair is already built and intact, else None (no build)."""
    from kd_core.demo import built_demo_path

    return built_demo_path(name)


# A dashboard check must come back quickly: one retry, short timeouts (a run retries more).
CHECK_POLICY = RetryPolicy(retries=1, backoff_s=0.2, connect_timeout_s=3.0, read_timeout_s=10.0)


def check_remote_teacher(url: str, api: str = "kd", tokenizer: str | None = None) -> ModelCheck:
    """Reach a teacher server (its info; kd's sends its tokenizer, kept in the cache): network
    calls with timeouts, so this runs in a thread worker, never on the UI's thread."""
    if message := address_error(url):
        return ModelCheck(url, error=message)
    try:
        tok_path = resolve_model(tokenizer, "teacher_tokenizer") if tokenizer else None
        c = connect_teacher(url, api, teacher_token(), default_cache_dir(), tok_path, CHECK_POLICY)
    except Exception as e:  # unreachable, refused, a bad tokenizer: one line
        return ModelCheck(url, error=one_line(e))
    facts = RemoteFacts(
        c.client.http.url,
        c.api,
        c.info.model,
        c.info.vocab_size,
        c.identity.short,
        c.latency_s * 1000,
    )
    return ModelCheck(url, c.tokenizer_path, remote_model_info(c), remote=facts)


def check_model(name: str, role: str, api: str = "kd", tokenizer: str | None = None) -> ModelCheck:
    name = name.strip()
    if not name:
        return ModelCheck(
            name, error=f"{role}: type a model folder, a Hugging Face id or demo-{role}"
        )
    if is_remote(name):
        if role != "teacher":
            return ModelCheck(name, error=f"{role}: a server's address names a teacher only")
        return check_remote_teacher(name, api, tokenizer)
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
    if (r := check.remote) is not None:
        vocab = f"{r.vocab_size:,}" if r.vocab_size else "not reported (its tokenizer's)"
        return [
            ("remote teacher", r.model),
            ("server", f"{r.url} ({r.api})"),
            ("vocabulary", vocab),
            ("latency", f"{r.latency_ms:.0f} ms"),
            ("fingerprint", r.fingerprint),
            ("memory", "none here: it runs on the server"),
        ]
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
    if strategy == "align":
        return (
            "≈ Different tokenizers: the student reads the teacher's response text in its own "
            "tokens, aligned by character offsets (align).",
            detail,
        )
    if strategy == "none":
        return (
            "✗ These tokenizers share too little to distil; pick a student of the same "
            "model family.",
            detail,
        )
    if strategy == "refused":
        return (f"✗ vocab_strategy = {v.get('asked', '?')!r} cannot be used for this pair.", detail)
    if strategy and strategy != "error":  # a strategy newer than this pane: say its name
        return (f"Vocabulary strategy: {strategy}.", detail)
    return ("? Could not compare the tokenizers.", detail)


@dataclass(frozen=True)
class MeasuredAlignment:
    """What a finished run measured of its vocabulary alignment, for one domain."""

    domain: str
    strategy: str
    chars_covered: float | None  # share of response characters the loss covered
    one_to_one: float | None  # share of aligned spans that are one token on both sides


def _share(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    return float(value) if ok else None


def measured_alignment(
    output: Path, teacher: Path | None = None, student: Path | None = None
) -> list[MeasuredAlignment]:
    """domains.<name>.vocab_alignment of <output>/kd_summary.json, for the domains trained with
    this teacher and student (entries that do not name their pair count); [] when no run has
    measured it, or the file is missing or unreadable (the pane then says nothing)."""
    try:
        summary = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))
        domains = summary.get("domains", {})
        entries = sorted(domains.items()) if isinstance(domains, dict) else []
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return []
    out = []
    for name, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("vocab_alignment"), dict):
            continue
        if not _same_model(entry.get("teacher"), teacher) or not _same_model(
            entry.get("student"), student
        ):
            continue  # measured for another pair: not this one's figure
        va = entry["vocab_alignment"]
        out.append(
            MeasuredAlignment(
                str(name),
                str(va.get("strategy", "?")),
                _share(va.get("response_chars_covered")),
                _share(va.get("spans_one_to_one")),
            )
        )
    return out


def _same_model(recorded: Any, chosen: Path | None) -> bool:
    if not isinstance(recorded, str) or chosen is None:
        return True
    try:
        return Path(recorded).resolve() == chosen.resolve()
    except OSError:
        return recorded == str(chosen)


def coverage_words(m: MeasuredAlignment) -> str:
    """e.g. "align · 94% of response characters covered · 91% spans one-to-one"."""
    parts = [m.strategy]
    if m.chars_covered is not None:
        parts.append(f"{m.chars_covered:.0%} of response characters covered")
    if m.one_to_one is not None:
        parts.append(f"{m.one_to_one:.0%} spans one-to-one")
    return " · ".join(parts)
