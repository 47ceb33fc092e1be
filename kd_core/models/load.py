"""Find, check, describe and load models: local mlx-lm folders or Hugging Face ids.

Offline first: a hub id is resolved from the local Hugging Face cache only; nothing is
downloaded unless the caller passes allow_download=True. Never trust_remote_code.
"""

from __future__ import annotations

import gc
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_core.demo import demo_model_path
from kd_core.errors import one_line

# demo-student-sp: demo-student with a SentencePiece-style tokenizer of its own (kd_core.demo.sp)
DEMO_NAMES = ("demo-teacher", "demo-student", "demo-student-sp")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


class ModelError(ValueError):
    """A model that cannot be found or used (one-line message naming it)."""


def _check_folder(path: Path, role: str) -> Path:
    if not path.is_dir():
        raise ModelError(f"{role}: {path} is not a folder")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{role}: {path} has no config.json (expected an mlx-lm / Hugging Face model folder)"
        )
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ModelError(f"{role}: {path}/config.json is not valid JSON") from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelError(f"{role}: {path} has no *.safetensors weights")
    for w in weights:
        try:
            safetensors_header(w)
        except (OSError, ValueError):
            raise ModelError(f"{role}: {w} is damaged (not a readable safetensors file)") from None
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{role}: {path} has no tokenizer (tokenizer.json or tokenizer.model)")
    return path


def resolve_model(name: str | None, role: str = "model", allow_download: bool = False) -> Path:
    """Turn a name the user typed into a checked local folder.

    Order: the built-in demo names; an existing local folder; a Hugging Face id found in the
    local cache; a download only if allowed.
    """
    if name is None or name in DEMO_NAMES:
        which = name or ("demo-teacher" if role == "teacher" else "demo-student")
        return demo_model_path(which)
    path = Path(name).expanduser()
    if path.exists():
        return _check_folder(path, role)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelError(
            f"{role}: {name} is neither a local folder nor a Hugging Face id (owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with mlx-lm
        raise ModelError(f"{role}: {name} is not a local folder") from None
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        local = snapshot_download(name, local_files_only=True, allow_patterns=patterns)
        return _check_folder(Path(local), role)
    except ModelError:
        raise
    except Exception:
        if not allow_download:
            raise ModelError(
                f"{role}: {name} is not in the local Hugging Face cache; pass "
                "--allow-download to fetch it"
            ) from None
    import huggingface_hub.constants as hf_constants

    hf_constants.HF_HUB_OFFLINE = False  # the user allowed this download explicitly
    try:
        local = snapshot_download(name, allow_patterns=patterns)
    except Exception as e:
        raise ModelError(f"{role}: could not download {name} ({e.__class__.__name__})") from None
    return _check_folder(Path(local), role)


def load_model(
    path: Path, role: str = "model", adapter_path: str | Path | None = None
) -> tuple[Any, Any]:
    """mlx_lm.load with one-line errors; never runs remote code."""
    from mlx_lm import load

    try:
        model, tokenizer = load(
            str(path),
            adapter_path=str(adapter_path) if adapter_path else None,
            trust_remote_code=False,
        )
    except Exception as e:  # mlx-lm raises many kinds; the user needs one line
        raise ModelError(f"{role}: cannot load {path}: {one_line(e)}") from None
    return model, tokenizer


def vocab_size(model: Any) -> int:
    """Width of a model's logits (its embedding rows), read off one forward of one token."""
    import mlx.core as mx

    return int(model(mx.array([[0]], dtype=mx.int32)).shape[-1])


def release(*objects: Any) -> None:
    """Drop models and return their memory to the system (the teacher before training)."""
    import mlx.core as mx

    del objects
    gc.collect()
    mx.clear_cache()


def safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError("short file")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > 100_000_000:
            raise ValueError("bad header length")
        header = json.loads(fh.read(n))
    size = path.stat().st_size
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        end = meta["data_offsets"][1]
        if 8 + n + end > size:
            raise ValueError("truncated")
    return header


@dataclass
class ModelInfo:
    path: str
    family: str
    parameters: int
    quantization: str
    vocab_size: int
    layers: int
    hidden_size: int
    disk_bytes: int

    def memory_estimate_gb(self, training: bool = False) -> float:
        """Weights in memory, plus for training LoRA activations and optimiser (rough)."""
        base = self.disk_bytes / 1e9
        return base * (1.3 if training else 1.1)


def model_info(path: Path) -> ModelInfo:
    cfg = json.loads((path / "config.json").read_text())
    params = 0
    bits = None
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if isinstance(q, dict):
        bits = q.get("bits")
    disk = 0
    for w in sorted(path.glob("*.safetensors")):
        disk += w.stat().st_size
        for key, meta in safetensors_header(w).items():
            if key == "__metadata__" or key.endswith((".scales", ".biases")):
                continue
            n = 1
            for d in meta["shape"]:
                n *= d
            if meta["dtype"] == "U32" and bits:  # packed quantized weights
                n = n * 32 // int(bits)
            params += n
    text_cfg = cfg.get("text_config", cfg)
    return ModelInfo(
        path=str(path),
        family=str(cfg.get("model_type", "unknown")),
        parameters=params,
        quantization=f"{bits}-bit" if bits else "none",
        vocab_size=int(text_cfg.get("vocab_size", 0)),
        layers=int(text_cfg.get("num_hidden_layers", 0)),
        hidden_size=int(text_cfg.get("hidden_size", 0)),
        disk_bytes=disk,
    )


def list_cached_models() -> list[str]:
    """Hugging Face ids present in the local cache (no network)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")
