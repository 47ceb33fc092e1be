"""`hf:NAME[:split]`: a Hugging Face dataset already in the local cache, read with the same
row detection as a file. Needs the optional `datasets` library; never reaches the network
unless the caller allows downloads (as for models: kd_core/models/load.py)."""

from __future__ import annotations

import sys
from typing import Any

from kd_core.data_files.errors import DataFileError
from kd_core.data_files.formats import DataFile, DataSource, typed_rows
from kd_core.errors import one_line

HF_PREFIX = "hf:"
# datasets keeps its offline switches in datasets.config (older versions: the second name).
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(HF_PREFIX)


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """("owner/name", split) of "hf:owner/name[:split]"; the split defaults to "train"."""
    name, _, split = spec.removeprefix(HF_PREFIX).partition(":")
    if not is_hf_spec(spec) or not name.strip() or ":" in split:
        raise DataFileError(f"data: {spec!r} is not hf:NAME or hf:NAME:SPLIT")
    return name.strip(), split.strip() or "train"


def _datasets_module(spec: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataFileError(
            f"data: {spec} needs the Hugging Face `datasets` library, which is not installed "
            "(pip install datasets)"
        ) from None
    return datasets


def _offline_switches(datasets: Any) -> list[tuple[Any, str]]:
    """The (module, flag) pairs that keep the call off the network. Set for the call and put
    back after it, not in os.environ: the libraries read the environment once, at import, and
    a later call that allows downloads must not find them switched off for the process."""
    switches = [(getattr(datasets, "config", None), f) for f in _OFFLINE_FLAGS]
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        switches.append((hub, "HF_HUB_OFFLINE"))
    return [(mod, f) for mod, f in switches if hasattr(mod, f)]


def _load(datasets: Any, spec: str, name: str, split: str, allow_download: bool) -> Any:
    saved = (
        [] if allow_download else [(m, f, getattr(m, f)) for m, f in _offline_switches(datasets)]
    )
    try:
        for mod, flag, _ in saved:
            setattr(mod, flag, True)
        return datasets.load_dataset(name, split=split)
    except Exception as e:
        where = "the local Hugging Face cache" if not allow_download else "Hugging Face"
        raise DataFileError(
            f"data: {spec}: cannot load {name} split {split!r} from {where} ({one_line(e)})"
        ) from None
    finally:
        for mod, flag, value in saved:
            setattr(mod, flag, value)


def read_hf_dataset(
    spec: str,
    allow_download: bool = False,
    prompt_key: str = "prompt",
    completion_key: str = "completion",
) -> DataSource:
    """The split of `spec` as a DataSource (train only; rows numbered from 1 as "row N")."""
    name, split = parse_hf_spec(spec)
    datasets = _datasets_module(spec)
    ds = _load(datasets, spec, name, split, allow_download)
    where = f"{HF_PREFIX}{name}:{split}"
    numbered = ((i, dict(ex)) for i, ex in enumerate(ds, 1))
    train: DataFile = typed_rows(where, numbered, prompt_key, completion_key, unit="row")
    return DataSource(where, train)
