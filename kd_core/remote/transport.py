"""HTTP to a remote teacher: one kept-alive connection, timeouts, bounded retries with
exponential backoff, and the one-line errors every client raises (kd_core/remote/clients.py).

TeacherUnavailable when the server cannot be reached or goes away (connect and read timeouts,
then bounded retries: the message names the host, what failed and after how many tries),
TeacherRefused when it answers an error, TeacherUnsupported for a mode an API cannot serve,
FingerprintMismatch for a server whose model is not the one expected.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

RETRY_STATUS = (502, 503, 504)  # a proxy or a server still starting / restarting


class RemoteTeacherError(RuntimeError):
    """Anything that went wrong with a remote teacher; the message is one line."""


class TeacherUnavailable(RemoteTeacherError):
    """The server cannot be reached or went away (after the retries)."""


class TeacherRefused(RemoteTeacherError):
    """The server answered with an error (or with something that is not an answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TeacherUnsupported(RemoteTeacherError):
    """This teacher_api cannot serve what was asked (the message says what it lacks)."""


class FingerprintMismatch(RemoteTeacherError):
    """The server serves another model than the one the cache / checkpoint was made with."""


@dataclass
class RetryPolicy:
    """Timeouts and retries of every request. The backoff doubles from `backoff_s` up to
    `max_backoff_s`; with the defaults a server that is gone is reported after 5 tries and
    0.25 + 0.5 + 1 + 2 = 3.75 s of waiting (plus one connect timeout per try at worst)."""

    retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0  # a big score request on a busy teacher takes a while
    # A domain's teacher pass is one request (the server seeds per request): hours for a big
    # teacher. A host that vanishes meanwhile is found by TCP keepalive (about 2 minutes).
    generate_timeout_s: float = 24 * 3600.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "connection closed by the server"
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0]}" if text else e.__class__.__name__


def _error_message(data: bytes) -> str:
    """The one line an error reply holds: kd's and SGLang's {"error": {"message"}}, vLLM's
    {"error": {...}} or its older flat {"object": "error", "message"}, mlx_lm's
    {"error": "..."}, or the body's first line."""
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return lines[0] if lines else "(empty reply)"
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"]).strip().split("\n")[0]
        if isinstance(err, str):
            return err.strip().split("\n")[0]
        if "detail" in body:  # FastAPI's validation errors
            return str(body["detail"]).split("\n")[0][:300]
    return str(body)[:300]


def keepalive(sock: Any) -> None:
    """TCP keepalive probes after 60 s of silence, every 15 s, 4 of them: a peer that vanished
    (a host powered off, a cable pulled) ends a long wait in about 2 minutes, not at its
    read timeout. Options a platform lacks are left at its defaults."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class HttpJson:
    """JSON over HTTP/1.1 to one server: a kept-alive connection, timeouts, bounded retries
    with exponential backoff, one-line errors; counts the body bytes sent and received."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        name: str = "kd",
    ) -> None:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"teacher: {url!r} is not an http://host:port address")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host, self.scheme = parts.hostname, parts.scheme
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.token, self.policy, self.name = token, policy or RetryPolicy(), name
        self.bytes_sent = self.bytes_received = self.requests = 0
        self._conn: http.client.HTTPConnection | None = None
        self._read_timeout = self.policy.read_timeout_s
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, body: Any = None, read_timeout_s: float | None = None
    ) -> Any:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            self._read_timeout = read_timeout_s or self.policy.read_timeout_s
            status, data = self._with_retries(method, path, payload)
        if status >= 400:
            raise TeacherRefused(
                f"{self.name} teacher at {self.url}: {method} {path} answered {status}: "
                f"{_error_message(data)}",
                status,
            )
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TeacherRefused(
                f"{self.name} teacher at {self.url}: {method} {path} answered something "
                "that is not JSON"
            ) from None

    def _with_retries(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        tries = self.policy.retries + 1
        last = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.policy.delay(attempt))
            try:
                status, data = self._send(method, path, payload)
            except (OSError, http.client.HTTPException) as e:
                last = _describe(e)
                self.close()
                continue
            if status in RETRY_STATUS:
                last = f"HTTP {status}: {_error_message(data)}"
                continue
            return status, data
        raise TeacherUnavailable(
            f"{self.name} teacher at {self.host}:{self.port}: {method} {path} failed "
            f"({last}) after {tries} tries"
        )

    def _send(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        """One exchange; a kept-alive connection the server closed meanwhile is retried at
        once on a new one (not a failure of the server)."""
        reused = self._conn is not None
        try:
            return self._exchange(method, path, payload)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            return self._exchange(method, path, payload)

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.host, self.port, timeout=self.policy.connect_timeout_s)
            conn.connect()
            keepalive(conn.sock)
            self._conn = conn
        self._conn.sock.settimeout(self._read_timeout)  # type: ignore[union-attr]
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._conn.request(method, self.prefix + path, body=payload, headers=headers)
        resp = self._conn.getresponse()
        data = resp.read()
        self.requests += 1
        self.bytes_sent += len(payload or b"")
        self.bytes_received += len(data)
        if resp.will_close:
            self.close()
        return resp.status, data
