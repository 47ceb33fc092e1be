"""The output folder: where each domain's adapters go, their mlx-lm config, the run summary.

    <output>/<domain>/adapters.safetensors, adapter_config.json, metrics.jsonl, checkpoint_*/
    <output>/kd_summary.json

Every file is written to a temporary file and renamed (kd_core/files/atomic.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from kd_core.config import KDConfig
from kd_core.domains import check_domain_name
from kd_core.events import DomainResult
from kd_core.files.atomic import atomic_write_json
from kd_core.models.identity import ModelIdentity, pair_fields

SUMMARY_FILE = "kd_summary.json"


class OutputError(ValueError):
    """The output folder cannot be used (one-line message)."""


def check_output_dir(path: Path, what: str = "output") -> Path:
    """Make the folder and prove it is writable before any work is done."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".kd-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{what}: cannot write to {path} ({e.strerror or e})") from None
    return path


def domain_dir(output: Path, domain: str) -> Path:
    """<output>/<domain>, refusing names that would land outside the output folder."""
    check_domain_name(domain)
    d = (output / domain).resolve()
    if d.parent != output.resolve():
        raise OutputError(f"domain: {domain!r} would be written outside {output}")
    return d


def lora_parameters(cfg: KDConfig) -> dict[str, Any]:
    return {"rank": cfg.lora_rank, "scale": cfg.lora_scale, "dropout": cfg.lora_dropout}


def adapter_config(
    cfg: KDConfig, num_layers: int, student: str, teacher: str, domain: str
) -> dict[str, Any]:
    """mlx-lm's adapter_config.json (load/generate/fuse read it) plus our KD settings."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(cfg),
        "model": student,
        "kd": {"teacher": teacher, "domain": domain, **cfg.to_dict()},
    }


def write_summary(
    path: Path,
    teacher: ModelIdentity,
    student: ModelIdentity,
    cfg: KDConfig,
    results: list[DomainResult],
    seconds: float,
) -> None:
    """kd_summary.json over all domains. Entries of earlier runs for other domains stay, each
    with the teacher, student and settings it was trained with (not this run's)."""
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            previous = loaded.get("domains", {}) if isinstance(loaded, dict) else {}
            for entry in previous.values():  # summaries written before entries said so
                if isinstance(entry, dict) and "teacher" not in entry:
                    entry.setdefault("teacher", loaded.get("teacher"))
                    entry.setdefault("student", loaded.get("student"))
                    entry.setdefault("config", loaded.get("config"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            previous = {}
    models = pair_fields(teacher, student)
    mine = {**models, "config": cfg.to_dict()}
    domains = dict(previous) | {r.domain: {**r.to_dict(), **mine} for r in results}
    atomic_write_json(
        path,
        {
            **models,
            "config": cfg.to_dict(),
            "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "run_seconds": round(seconds, 3),
            "domains": domains,
        },
    )
