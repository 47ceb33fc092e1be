"""`kd serve-teacher`: one MLX teacher behind HTTP, for trainers on other machines.

The teacher is loaded once, by the one thread that runs every MLX call (TeacherWorker): MLX
arrays belong to the thread that built their graph, so the model is built inside that
thread and aiohttp's event loop never touches MLX. The loop parses and checks requests and
hands them to the worker through a queue; the worker gathers score requests that arrive
within `batch_window_s` of each other (up to `max_batch`, same temperature and top-k) into
one `soft_targets` call, whose forwards then hold rows from several trainers.

Security is kd-tui --serve's rule (kd_tui/serve.py): bound to a loopback address the server
is open to this machine's users; any other address needs a token (at least 16 characters;
`serve_teacher` generates one with `secrets` when none is given and prints it). A middleware
in front of every route compares `Authorization: Bearer <token>` in constant time before the
route runs: no token 401, a wrong one 403, and the teacher does no work for either.
"""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_core.config import ConfigError, KDConfig
from kd_core.errors import one_line
from kd_core.generate import fitted_prompts, format_prompt, generate_responses
from kd_core.models.identity import identify_model, tokenizer_files
from kd_core.remote.access import (
    ServeError,
    bind_sockets,
    check_port,
    is_local,
    require_token,
    token_matches,
)
from kd_core.remote.protocol import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_TOP_K,
    GenerateRequest,
    InfoReply,
    ProtocolError,
    ScoreRequest,
    Targets,
    TargetsReply,
    encode_tokenizer,
    error_body,
    tail_logmass,
)
from kd_core.runtime.cpu_streams import stream_count
from kd_core.teacher.cache import response_texts
from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets
from kd_core.vocab.plan import eos_ids

BATCH_WINDOW_S = 0.005  # how long the worker waits for more score requests to join a batch
MAX_BATCH = 16  # score requests merged into one soft_targets call
MAX_REQUEST_TOKENS = 1 << 20  # tokens one request may carry (a bound on the worker's memory)
MAX_BODY_BYTES = 512 << 20


# --- the MLX thread -----------------------------------------------------------------------


@dataclass
class WorkerStats:
    """What the teacher has done; `forwards` counts soft_targets calls (each one or more
    forwards of FWD_CHUNK rows) and `generations` generate calls: 0 means no model work."""

    loads: int = 0
    forwards: int = 0
    generations: int = 0
    score_requests: int = 0
    batches: int = 0
    scored_positions: int = 0
    busy_s: float = 0.0
    # The generation under way (what, done, total), as the teacher pass reports its progress:
    # a trainer waiting on /v1/generate reads it from /v1/info. Empty when none is.
    working_on: str = ""
    done: int = 0
    total: int = 0


@dataclass
class Job:
    kind: str  # "score" | "generate"
    request: Any
    cfg: Any  # KDConfig
    reply: Callable[[bytes | BaseException], None]

    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.cfg.temperature, self.cfg.top_k)


@dataclass
class TeacherWorker:
    """The one thread that loads the teacher and runs every MLX call."""

    model_path: Path
    model_name: str
    batch_window_s: float = BATCH_WINDOW_S
    max_batch: int = MAX_BATCH
    stats: WorkerStats = field(default_factory=WorkerStats)

    def __post_init__(self) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.ready = threading.Event()
        self.error: str | None = None
        self.info: InfoReply | None = None
        self._deferred: deque[Job] = deque()
        self._thread = threading.Thread(target=self._run, name="kd-teacher-mlx", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self._load()
        except Exception as e:  # reported by start(): the server does not come up
            self.error = one_line(e)
            self.ready.set()
            return
        self.ready.set()
        while (job := self._next()) is not None:
            batch = self._gather(job) if job.kind == "score" else [job]
            t0 = time.perf_counter()
            try:
                if job.kind == "score":
                    self._score(batch)
                else:
                    job.reply(self._generate(job.request, job.cfg))
            except Exception as e:  # the jobs fail, the server stays up
                for j in batch:
                    j.reply(RuntimeError(f"teacher: {one_line(e)}"))
            self.stats.busy_s += time.perf_counter() - t0

    def _load(self) -> None:
        from kd_core import __version__
        from kd_core.models.load import load_model, vocab_size

        ident = identify_model(self.model_path, "teacher")
        # What /v1/tokenizer sends: the files the identity hashes, and config.json (mlx-lm
        # reads a model's tokenizer defaults from it). Read once: the reply is what was hashed.
        self.tokenizer_files = tokenizer_files(self.model_path, "teacher")
        self.tokenizer_files["config.json"] = (self.model_path / "config.json").read_bytes()
        self.model, self.tokenizer = load_model(self.model_path, "teacher")
        self.vocab = vocab_size(self.model)
        self.stats.loads += 1
        self.info = InfoReply(
            model=self.model_name,
            fingerprint=ident.weights,
            tokenizer=ident.tokenizer,
            vocab_size=self.vocab,
            kd_version=__version__,
            max_top_k=min(MAX_TOP_K, self.vocab),
        )

    def _next(self) -> Job | None:
        return self._deferred.popleft() if self._deferred else self.jobs.get()

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the score jobs with its settings that arrive within the window; other
        jobs wait their turn (a None ends the worker after this batch)."""
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is not None and job.key() == first.key():
                batch.append(job)
            else:
                self._deferred.append(job)  # type: ignore[arg-type]
                if job is None:
                    break
        return batch

    def _score(self, batch: list[Job]) -> None:
        seqs: list[np.ndarray] = []
        plens: list[int] = []
        parts: list[tuple[Job, int, int, bool]] = []
        for job in batch:
            try:
                s, p, echo = self._sequences(job.request)
            except ProtocolError as e:
                job.reply(e)
                continue
            parts.append((job, len(seqs), len(s), echo))
            seqs += s
            plens += p
        if not parts:
            return
        cfg = batch[0].cfg
        ids, lps, chosen = soft_targets(self.model, seqs, plens, cfg, streams=_streams(cfg))
        self.stats.forwards += 1
        self.stats.batches += 1
        self.stats.score_requests += len(parts)
        self.stats.scored_positions += sum(len(c) for c in chosen)
        for job, start, n, echo in parts:
            sl = slice(start, start + n)
            reply = TargetsReply(self.info.fingerprint, _targets(ids[sl], lps[sl], chosen[sl]))  # type: ignore[union-attr]
            if echo:
                reply.sequences, reply.prompt_lens = seqs[sl], plens[sl]
            job.reply(_dump(reply.to_json(self.vocab, job.request.logprob_dtype)))

    def _sequences(self, req: ScoreRequest) -> tuple[list[np.ndarray], list[int], bool]:
        """The request's sequences in teacher ids (text tokenized here), checked against the
        vocabulary; `echo`: whether the reply must carry them (they came as text)."""
        if req.texts is None:
            seqs, plens = req.sequences or [], req.prompt_lens or []
        else:
            seqs, plens = [], []
            for t in req.texts:
                s, p = self._tokenize(t)
                seqs.append(s)
                plens.append(p)
        total = sum(len(s) for s in seqs)
        if total > MAX_REQUEST_TOKENS:
            raise ProtocolError(
                f"sequences: {total} tokens in one request; at most {MAX_REQUEST_TOKENS}",
                "sequences",
            )
        for i, s in enumerate(seqs):
            if len(s) and (s.min() < 0 or s.max() >= self.vocab):
                raise ProtocolError(
                    f"sequences[{i}]: token ids must be from 0 to {self.vocab - 1} "
                    "(the teacher's vocabulary)",
                    "sequences",
                )
        return seqs, plens, req.texts is not None

    def _tokenize(self, t: Any) -> tuple[np.ndarray, int]:
        tok = self.tokenizer
        prompt = format_prompt(tok, t.prompt) if t.chat else list(tok.encode(t.prompt))
        if not prompt:
            raise ProtocolError("texts: a prompt must give at least one token", "texts")
        resp = list(tok.encode(t.response, add_special_tokens=False))
        if t.eos:
            resp.append(eos_ids(tok)[0])  # the EOS the teacher pass appends (one rule)
        return np.array(prompt + resp, np.int32), len(prompt)

    def _generate(self, req: GenerateRequest, cfg: Any) -> bytes:
        """As the teacher pass does it: prompts formatted and cut to fit, answers sampled
        from the MLX random state seeded with cfg.seed, then soft targets and texts."""
        fitted = fitted_prompts(self.tokenizer, req.prompts, cfg)
        seqs, plens = generate_responses(
            self.model, self.tokenizer, [], cfg, self._progress, fitted=fitted
        )
        self.stats.generations += 1
        reply = TargetsReply(self.info.fingerprint, None, seqs, plens)  # type: ignore[union-attr]
        reply.prompt_cut = [cut for _, cut in fitted]
        if req.with_targets:
            ids, lps, chosen = soft_targets(
                self.model, seqs, plens, cfg, self._progress, streams=_streams(cfg)
            )
            self.stats.forwards += 1
            reply.targets = _targets(ids, lps, chosen)
            reply.texts, reply.char_ends = response_texts(self.tokenizer, seqs, plens)
        self.stats.working_on = ""
        return _dump(reply.to_json(self.vocab, req.logprob_dtype))

    def _progress(self, done: int, total: int, what: str) -> None:
        self.stats.working_on, self.stats.done, self.stats.total = what, done, total


def model_identity(path: Path) -> tuple[str, str]:
    """(weights, tokenizer) fingerprints of a model folder, as kd keys its teacher cache
    (kd_core.models.identity: sha256 of every weight byte, memoised)."""
    ident = identify_model(path, "teacher")
    return ident.weights, ident.tokenizer


def _streams(cfg: Any) -> int:
    """The CPU streams the in-process teacher pass would use, so that a forward here splits
    its rows (and pads them) as the in-process one does: the same targets to the bit."""
    return stream_count(cfg.cpu_streams, FWD_CHUNK)


def _targets(ids: list[np.ndarray], lps: list[np.ndarray], chosen: list[np.ndarray]) -> Targets:
    return Targets(ids, lps, chosen, [tail_logmass(lp) for lp in lps])


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# --- HTTP ---------------------------------------------------------------------------------


def bearer(request: Any) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def _error(status: int, message: str, field_name: str = "", **headers: str) -> Any:
    from aiohttp import web

    return web.json_response(error_body(message, field_name), status=status, headers=headers)


def token_middleware(token: str | None) -> Any:
    """Every route, unknown ones too, passes here first: no token 401, a wrong one 403."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler: Any) -> Any:
        if token is not None:
            given = bearer(request)
            if not given:
                return _error(
                    401,
                    "token: this teacher needs Authorization: Bearer <token>",
                    "token",
                    **{"WWW-Authenticate": "Bearer"},
                )
            if not token_matches(given, token):
                return _error(403, "token: wrong token", "token")
        return await handler(request)

    return check


def _field(e: Exception) -> str:
    """The field a refusal names: ProtocolError carries it, ConfigError starts with it."""
    return getattr(e, "field", "") or str(e).split(":", 1)[0]


async def _read(request: Any, parse: Callable[[Any], Any]) -> Any:
    """The request's JSON body, parsed into a request dataclass (ProtocolError if not)."""
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError("body: not valid JSON", "body") from None
    return parse(body)


def _score_config(req: ScoreRequest) -> KDConfig:
    return KDConfig(temperature=float(req.temperature), top_k=req.top_k)


def _generate_config(req: GenerateRequest) -> KDConfig:
    return KDConfig(
        temperature=float(req.temperature),
        top_k=req.top_k,
        teacher_temperature=float(req.teacher_temperature),
        max_tokens=req.max_tokens,
        seed=req.seed,
        max_seq_length=req.max_seq_length,
    )


@dataclass
class Routes:
    """The routes' handlers: requests are parsed and checked on the event loop, the model work
    is queued to the worker (the MLX thread) and awaited."""

    worker: TeacherWorker

    async def submit(self, kind: str, request: Any, cfg: KDConfig) -> Any:
        from aiohttp import web

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes | BaseException] = loop.create_future()

        def settle(result: bytes | BaseException) -> None:
            if not fut.done():
                fut.set_result(result)

        job = Job(kind, request, cfg, lambda r: loop.call_soon_threadsafe(settle, r))
        self.worker.jobs.put(job)
        result = await fut
        if isinstance(result, ProtocolError):
            return _error(400, str(result), result.field)
        if isinstance(result, BaseException):
            return _error(500, one_line(result))
        return web.Response(body=result, content_type="application/json")

    async def parsed(
        self, kind: str, request: Any, parse: Callable[[Any], Any], config: Callable[[Any], Any]
    ) -> Any:
        try:
            req = await _read(request, parse)
            cfg = config(req)
        except (ProtocolError, ConfigError) as e:
            return _error(400, one_line(e), _field(e))
        return await self.submit(kind, req, cfg)

    async def score(self, request: Any) -> Any:
        return await self.parsed("score", request, ScoreRequest.from_json, _score_config)

    async def generate(self, request: Any) -> Any:
        return await self.parsed("generate", request, GenerateRequest.from_json, _generate_config)

    async def tokenizer(self, request: Any) -> Any:
        from aiohttp import web

        body = await asyncio.to_thread(encode_tokenizer, self.worker.tokenizer_files)
        return web.json_response(body)

    async def info(self, request: Any) -> Any:
        from aiohttp import web

        body = self.worker.info.to_json()  # type: ignore[union-attr]
        body["stats"] = asdict(self.worker.stats)
        return web.json_response(body)


def build_app(worker: TeacherWorker, token: str | None) -> Any:
    from aiohttp import web

    routes = Routes(worker)
    app = web.Application(middlewares=[token_middleware(token)], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/v1/info", routes.info)
    app.router.add_get("/v1/tokenizer", routes.tokenizer)
    app.router.add_post("/v1/score", routes.score)
    app.router.add_post("/v1/generate", routes.generate)
    return app


# --- running it ---------------------------------------------------------------------------


class TeacherServer:
    """The worker, the socket and aiohttp's loop (on a thread of its own), started together.

    `start()` checks the settings, binds (port 0: any free port; `port` then says which),
    loads the teacher on the worker thread and starts serving; every failure is a ServeError
    with one line, and nothing is left running after one."""

    def __init__(
        self,
        model: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        batch_window_s: float = BATCH_WINDOW_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        require_token(token, host)  # before anything else: a refused bind loads nothing
        self.host, self.port, self.token = host, check_port(port), token
        from kd_core.models.load import ModelError, resolve_model

        try:
            path = resolve_model(model, "teacher")
        except ModelError as e:
            raise ServeError(str(e)) from None
        self.worker = TeacherWorker(path, model, batch_window_s, max_batch)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> TeacherServer:
        socks = bind_sockets(self.host, self.port)
        self.port = socks[0].getsockname()[1]
        self.worker.start()
        self.worker.ready.wait()
        if self.worker.error is not None:
            for sock in socks:
                sock.close()
            raise ServeError(f"model: {self.worker.error}")
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(socks, started), name="kd-teacher-http", daemon=True
        )
        self._thread.start()
        started.wait()
        return self

    def _serve(self, socks: list[socket.socket], started: threading.Event) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(build_app(self.worker, self.token), access_log=None)
        loop.run_until_complete(runner.setup())
        for sock in socks:  # every address the host names (localhost: 127.0.0.1 and ::1)
            loop.run_until_complete(web.SockSite(runner, sock).start())
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop = None
        self.worker.stop()

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_teacher(
    model: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Serve until interrupted. A non-loopback host without a token gets a generated one,
    printed with the URL (the only way to learn it). ServeError on a bad setting."""
    if token is None and not is_local(host):
        token = secrets.token_urlsafe(24)
    server = TeacherServer(model, host, port, token).start()
    info = server.worker.info
    assert info is not None
    out(f"kd serve-teacher: serving {model} (fingerprint {info.fingerprint}) on {server.url}")
    if token:
        out(f"kd serve-teacher: every request needs the header: Authorization: Bearer {token}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        out("kd serve-teacher: stopped")
    finally:
        server.stop()
    return 0
