"""A teacher on another machine (issue 26): kd's own teacher server and clients for it and
for vLLM, SGLang and mlx_lm.server.

    kd serve-teacher --model PATH [--host 127.0.0.1] [--port 8765] [--token T]
    (also: python -m kd_core.remote --model PATH ...)

- protocol.py:    the wire format (versioned JSON; arrays as base64 of little-endian bytes)
- server.py:      TeacherServer / serve_teacher (aiohttp; one MLX thread; batched scoring)
- transport.py:   HTTP with timeouts and bounded retries; the one-line errors
- clients.py:     RemoteTeacher and kd's own client (KdTeacher)
- foreign.py:     clients for vLLM, SGLang and mlx_lm.server
- connect.py:     make_teacher(url, teacher_api), a run's connected teacher and its identity
- remote_pass.py: the teacher pass through a remote teacher, into the same cache
- step_targets.py: online and on-policy steps' targets fetched from the server per step

The run reaches it through kd_core/run_teacher.py (`teacher = "http://host:port"`); the
client side is the standard library's http.client, and the server imports aiohttp only when
it starts.
"""

from __future__ import annotations

from kd_core.remote.clients import (
    TEACHER_APIS,
    Generated,
    KdTeacher,
    RemoteTeacher,
    check_fingerprint,
)
from kd_core.remote.connect import ConnectedTeacher, connect_teacher, make_teacher
from kd_core.remote.foreign import MlxLmTeacher, SglangTeacher, VllmTeacher
from kd_core.remote.protocol import PROTOCOL_VERSION, Targets, TextItem
from kd_core.remote.transport import (
    FingerprintMismatch,
    RemoteTeacherError,
    RetryPolicy,
    TeacherRefused,
    TeacherUnavailable,
    TeacherUnsupported,
)
from kd_core.teacher_address import is_remote

__all__ = [
    "PROTOCOL_VERSION",
    "TEACHER_APIS",
    "ConnectedTeacher",
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
    "connect_teacher",
    "is_remote",
    "make_teacher",
]
