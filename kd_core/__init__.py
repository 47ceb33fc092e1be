"""kd_core: true knowledge distillation for LLMs on MLX (the headless engine).

Importing kd_core first loads a fast BLAS on Linux CPU (see kd_core.runtime.blas) before MLX is
imported anywhere. The public API is loaded lazily so that light modules
(kd_core.events, kd_core.config) never pull in MLX.
"""

from __future__ import annotations

import os as _os
from importlib import import_module
from typing import Any

from kd_core.runtime import blas as _blas  # noqa: F401  (must run before any `import mlx`)

# Offline first: the Hugging Face libraries never reach the network unless a user names a hub
# model and allows downloads (kd_core.models.load.resolve_model lifts this for that one call).
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "TrueKnowledgeDistiller": "kd_core.distiller",
    "DomainResult": "kd_core.events",
    "KDConfig": "kd_core.config",
    "RunSpec": "kd_core.config",
    "ConfigError": "kd_core.config",
    "DOMAIN_PROMPTS": "kd_core.domains",
    "compute_kd_loss": "kd_core.losses.core",
    "compute_ce_loss": "kd_core.losses.core",
    "compute_sparse_kd_loss": "kd_core.losses.core",
    "compute_combined_loss": "kd_core.losses.core",
    "compute_divergence": "kd_core.losses.divergences",
    "combined_loss": "kd_core.losses.core",
    "align_vocab_sizes": "kd_core.vocab.plan",
    "align_sequences": "kd_core.vocab.spans",
    "plan_vocab_alignment": "kd_core.vocab.plan",
    "RunControl": "kd_core.run.control",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kd_core' has no attribute {name!r}")
    return getattr(import_module(module), name)
