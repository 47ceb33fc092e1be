"""kd_core: true knowledge distillation for LLMs on MLX (the headless engine).

Importing kd_core first loads a fast BLAS on Linux CPU (see kd_core.blas) before MLX is
imported anywhere. The public API is loaded lazily so that light modules
(kd_core.events, kd_core.config) never pull in MLX.
"""

from __future__ import annotations

import os as _os
from importlib import import_module
from typing import Any

from kd_core import blas as _blas  # noqa: F401  (must run before any `import mlx`)

# Offline first: the Hugging Face libraries never reach the network unless a user names a hub
# model and allows downloads (kd_core.models.resolve_model lifts this for that one call).
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "TrueKnowledgeDistiller": "kd_core.distiller",
    "DomainResult": "kd_core.events",
    "KDConfig": "kd_core.config",
    "RunSpec": "kd_core.config",
    "ConfigError": "kd_core.config",
    "DOMAIN_PROMPTS": "kd_core.domains",
    "compute_kd_loss": "kd_core.losses",
    "compute_ce_loss": "kd_core.losses",
    "compute_sparse_kd_loss": "kd_core.losses",
    "compute_combined_loss": "kd_core.losses",
    "compute_divergence": "kd_core.divergences",
    "combined_loss": "kd_core.losses",
    "align_vocab_sizes": "kd_core.vocab",
    "align_sequences": "kd_core.align",
    "plan_vocab_alignment": "kd_core.vocab",
    "RunControl": "kd_core.control",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kd_core' has no attribute {name!r}")
    return getattr(import_module(module), name)
