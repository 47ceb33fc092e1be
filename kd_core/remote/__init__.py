"""A teacher on another machine (issue 26): kd's own teacher server and clients for it and
for vLLM, SGLang and mlx_lm.server.

    python -m kd_core.remote --model PATH [--host 127.0.0.1] [--port 8765] [--token T]

- protocol.py: the wire format (versioned JSON; arrays as base64 of little-endian bytes)
- server.py:   TeacherServer / serve_teacher (aiohttp; one MLX thread; batched scoring)
- clients.py:  RemoteTeacher and make_teacher(url, teacher_api): kd, vllm, sglang, mlx_lm

Nothing here is imported by the rest of kd_core unless a remote teacher is configured; the
server imports aiohttp only when it starts.
"""

from __future__ import annotations

from kd_core.remote.clients import (
    TEACHER_APIS,
    FingerprintMismatch,
    Generated,
    KdTeacher,
    MlxLmTeacher,
    RemoteTeacher,
    RemoteTeacherError,
    RetryPolicy,
    SglangTeacher,
    TeacherRefused,
    TeacherUnavailable,
    TeacherUnsupported,
    VllmTeacher,
    check_fingerprint,
    make_teacher,
)
from kd_core.remote.protocol import PROTOCOL_VERSION, Targets, TextItem

__all__ = [
    "PROTOCOL_VERSION",
    "TEACHER_APIS",
    "FingerprintMismatch",
    "Generated",
    "KdTeacher",
    "MlxLmTeacher",
    "RemoteTeacher",
    "RemoteTeacherError",
    "RetryPolicy",
    "SglangTeacher",
    "Targets",
    "TeacherRefused",
    "TeacherUnavailable",
    "TeacherUnsupported",
    "TextItem",
    "VllmTeacher",
    "check_fingerprint",
    "make_teacher",
]
