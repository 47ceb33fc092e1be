"""A run's teacher behind a URL: the client for its `teacher_api`, its identity, its tokenizer.

`teacher = "http://host:port"` names a teacher served elsewhere (`kd serve-teacher`, vLLM,
SGLang, mlx_lm.server). The run keys its teacher cache and checkpoints by the teacher's
ModelIdentity; for a remote teacher that identity is what the *server reports*: path = the URL,
weights = the server's fingerprint (for `kd serve-teacher` the very sha256 of the weights an
in-process teacher would hash, so a cache made in-process serves the remote teacher and back),
tokenizer = the hash of its tokenizer files. The trainer needs those files too (prompts,
vocabulary alignment, response texts): `kd serve-teacher` sends them, and they are checked
against the reported hash before use; the other servers do not, so their tokenizer is named
locally (`tokenizer_path`) and hashed here.

The token: `--teacher-token` if given, else the environment variable KD_TEACHER_TOKEN
(`teacher_token`). It is never written to kd.toml, events or run files: a secret in a run
folder would travel with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_core.config import ConfigError, KDConfig
from kd_core.models.identity import (
    TOKENIZER_FILES,
    ModelIdentity,
    tokenizer_digest,
    tokenizer_files,
)
from kd_core.models.load import ModelInfo
from kd_core.remote.clients import TEACHER_APIS, KdTeacher, RemoteTeacher
from kd_core.remote.foreign import MLX_LM_MAX_TOP_K, MlxLmTeacher, SglangTeacher, VllmTeacher
from kd_core.remote.protocol import InfoReply
from kd_core.remote.transport import RetryPolicy, TeacherRefused, TeacherUnsupported
from kd_core.teacher_address import TOKEN_ENV

TOKENIZER_DIR = "remote-tokenizers"  # under the cache folder, one folder per tokenizer hash


def teacher_token(flag: str | None = None) -> str | None:
    """The bearer token: the flag's value if given, else $KD_TEACHER_TOKEN, else none."""
    token = flag if flag is not None else os.environ.get(TOKEN_ENV)
    return token if token else None


def make_teacher(
    url: str, api: str = "kd", token: str | None = None, **options: Any
) -> RemoteTeacher:
    """The client for `teacher_api` = api ("kd", "vllm", "sglang", "mlx_lm")."""
    classes: dict[str, type[RemoteTeacher]] = {
        "kd": KdTeacher,
        "vllm": VllmTeacher,
        "sglang": SglangTeacher,
        "mlx_lm": MlxLmTeacher,
    }
    if api not in classes:
        allowed = ", ".join(repr(a) for a in TEACHER_APIS)
        raise ValueError(f"teacher_api: {api!r} is not allowed; use one of {allowed}")
    return classes[api](url, token, **options)


@dataclass
class ConnectedTeacher:
    """A remote teacher as a run holds it: pinned to the model it reported at connection
    (every later reply naming another fingerprint is refused)."""

    client: RemoteTeacher
    info: InfoReply
    identity: ModelIdentity
    tokenizer_path: Path
    latency_s: float  # the first /info round trip

    @property
    def api(self) -> str:
        return self.client.api

    def load_tokenizer(self) -> Any:
        from mlx_lm.utils import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def describe(self) -> str:
        vocab = f", vocabulary {self.info.vocab_size}" if self.info.vocab_size else ""
        return (
            f"remote teacher {self.info.model} at {self.client.http.url} ({self.api}, "
            f"fingerprint {self.identity.short}{vocab}, {self.latency_s * 1000:.0f} ms)"
        )


def connect_teacher(
    url: str,
    api: str,
    token: str | None,
    cache_dir: Path,
    tokenizer_path: Path | None = None,
    policy: RetryPolicy | None = None,
) -> ConnectedTeacher:
    """Reach the server, learn its model and fetch (kd) or hash (others) its tokenizer.
    One-line RemoteTeacherError when it cannot be reached, refuses, or sends a tokenizer that
    does not match the hash it reports."""
    client = make_teacher(url, api, token, policy=policy or RetryPolicy())
    t0 = time.perf_counter()
    info = client.info()
    latency = time.perf_counter() - t0
    if tokenizer_path is None:
        files = client.tokenizer_files()  # kd serve-teacher; the others say what to do
        hashed = {n: b for n, b in files.items() if n in TOKENIZER_FILES}
        if tokenizer_digest(hashed) != info.tokenizer:
            raise TeacherRefused(
                f"{api} teacher at {client.http.url}: the tokenizer files it sent do not match "
                f"the tokenizer hash it reports ({info.tokenizer[:12]})"
            )
        folder = store_tokenizer(cache_dir, info.tokenizer, files)
        tokenizer = info.tokenizer
    else:
        folder = tokenizer_path
        tokenizer = tokenizer_digest(tokenizer_files(folder, "teacher_tokenizer"))
    if not info.fingerprint.strip() or not tokenizer.strip():
        raise TeacherUnsupported(
            f"{api} teacher at {client.http.url} reports no model fingerprint or tokenizer"
        )
    client.expected_fingerprint = info.fingerprint
    identity = ModelIdentity(client.http.url, info.fingerprint, tokenizer)
    return ConnectedTeacher(client, info, identity, folder, latency)


def store_tokenizer(cache_dir: Path, digest: str, files: dict[str, bytes]) -> Path:
    """The files in <cache>/remote-tokenizers/<digest>/, written whole (a temp folder renamed
    into place): a folder there is always complete, so one that exists is reused."""
    root = cache_dir / TOKENIZER_DIR
    folder = root / digest
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():  # another run won the rename: theirs is the same bytes
            raise
    return folder


def remote_model_info(teacher: ConnectedTeacher) -> ModelInfo:
    """What the memory estimate and the dashboard know of a remote teacher: its name and
    vocabulary; it takes no memory here."""
    return ModelInfo(
        path=teacher.client.http.url,
        family=f"remote ({teacher.api})",
        parameters=0,
        quantization="unknown",
        vocab_size=teacher.info.vocab_size,
        layers=0,
        hidden_size=0,
        disk_bytes=0,
    )


def check_remote_modes(cfg: KDConfig) -> None:
    """One line naming what `teacher_api` lacks for the run's settings (ConfigError), before
    any work. vLLM and SGLang score given text (online, on-policy and given-text steps) but do
    not generate for kd: a prompts domain's teacher pass through them is refused by the client
    in one line when it is reached."""
    api = cfg.teacher_api
    if api == "kd":
        return
    if cfg.temperature != 1.0:
        raise ConfigError(
            f"temperature: {cfg.temperature:g} cannot be served by teacher_api {api!r}: it "
            "returns log-probs at temperature 1 only, and a top-k at 1 does not give one at "
            'another temperature; set temperature = 1 or use teacher_api = "kd"'
        )
    if api == "mlx_lm" and cfg.top_k > MLX_LM_MAX_TOP_K:
        raise ConfigError(
            f"top_k: {cfg.top_k} is more than mlx_lm.server returns (at most "
            f"{MLX_LM_MAX_TOP_K}); set top_k = {MLX_LM_MAX_TOP_K} or less"
        )
    if api == "mlx_lm" and (cfg.teacher_mode == "online" or cfg.on_policy_ratio > 0):
        raise ConfigError(
            "teacher_api: 'mlx_lm' serves the offline pass only: mlx_lm.server returns top "
            "log-probs for tokens it generates itself, not for a given text (online and "
            "on-policy steps need that); set teacher_mode = 'offline' and on_policy_ratio = 0, "
            'or serve the teacher with kd serve-teacher (teacher_api = "kd")'
        )
