"""The Viewer's backend: a child process that loads models and answers JSON-line requests.

Run as `python -m kd_tui.infer_worker`. Why a child process (docs/ARCHITECTURE.md): MLX
arrays belong to the thread that built them and the process may abort at exit after an MLX
thread ran; a child keeps MLX out of the dashboard and isolates crashes and out-of-memory kills.

Protocol: typed requests and replies, one JSON object per line, defined in
kd_tui/viewer_protocol.py (Generate, Inspect, Cancel, Shutdown -> Ready, Status, Token, Done,
ErrorReply, Finished, Cancelled, Inspection); every reply carries the request's id.

A request that fails gets an ErrorReply (one line, no slot) and the worker goes on.
`python -m kd_tui.infer_worker verdict TEACHER_DIR STUDENT_DIR [VOCAB_STRATEGY]` prints one
JSON line: the tokenizer verdict for the Models pane (kept out of the dashboard's process for
the same reason: importing mlx_lm in a thread made the process abort at exit, measured here).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import kd_core  # noqa: F401  (loads a fast BLAS; must precede every mlx import below)
from kd_core.errors import one_line
from kd_tui.viewer_protocol import (
    Cancel,
    Cancelled,
    Done,
    ErrorReply,
    Finished,
    Generate,
    Inspect,
    Inspection,
    Position,
    Ready,
    Reply,
    Request,
    Shutdown,
    Slot,
    SlotView,
    Status,
    Token,
    request_from_dict,
)

MAX_LOADED = 3  # teacher, base student, student + adapter
MAX_INSPECT_POSITIONS = 1024


def token_label(text: str) -> str:
    """A token as a person can read it in one cell row (newlines and blanks made visible)."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "⏎").replace("\t", "⇥")
    shown = "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in shown)
    return shown if shown.strip() else shown.replace(" ", "␣")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    path: str


class Stopped(Exception):
    """Raised between tokens: the running generation must end (cancel, newer request)."""


@dataclass(frozen=True)
class Rejected:
    """A line that is no request we can serve; answered with an ErrorReply, in turn."""

    id: Any
    message: str


Incoming = Request | Rejected | None  # None: end of input (the parent went away)


class Worker:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.pending: collections.deque[Incoming] = collections.deque()
        self.loaded: collections.OrderedDict[tuple[str, str | None], Loaded] = (
            collections.OrderedDict()
        )
        self.rid: Any = None

    # ---- I/O ------------------------------------------------------------------------------
    def emit(self, reply: Reply) -> None:
        self.out.write(reply.to_json() + "\n")
        self.out.flush()

    def read_stdin(self, stream: TextIO) -> None:
        """Reader thread: parses lines only (no MLX here); the main thread does the work."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            self.inbox.put(parse_request(line))
        self.inbox.put(None)  # EOF: the parent went away

    def next_request(self) -> Incoming:
        return self.pending.popleft() if self.pending else self.inbox.get()

    def check_cancel(self) -> None:
        """Between tokens: a cancel, a newer generate or shutdown stops the generation;
        other requests wait until it ends."""
        while True:
            try:
                req = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(req, Cancel):
                raise Stopped
            self.pending.append(req)  # handled after this generation stops
            if req is None or isinstance(req, Generate | Shutdown):
                raise Stopped

    # ---- the loop ---------------------------------------------------------------------------
    def serve(self, stdin: TextIO) -> None:
        threading.Thread(target=self.read_stdin, args=(stdin,), daemon=True).start()
        self.emit(Ready(pid=os.getpid()))
        while True:
            req = self.next_request()
            if req is None or isinstance(req, Shutdown):
                return
            self.rid = req.id
            try:
                self.handle(req)
            except Exception as e:  # one bad request must not end the session
                self.emit(ErrorReply(id=self.rid, message=one_line(e)))

    def handle(self, req: Request | Rejected) -> None:
        match req:
            case Generate():
                self.generate(req)
            case Inspect():
                self.inspect(req)
            case Cancel():
                self.emit(Cancelled(id=req.id))  # nothing was running
            case Rejected():
                self.emit(ErrorReply(id=req.id, message=req.message))
            case _:
                self.emit(ErrorReply(id=req.id, message=f"cannot serve {req.kind!r} here"))

    # ---- models -------------------------------------------------------------------------------
    def get(self, slot: Slot) -> Loaded:
        from kd_core.models.load import DEMO_NAMES, ModelError, load_model, release, resolve_model

        name, model, adapter = slot.name, str(slot.model), slot.adapter
        key = (model, str(adapter) if adapter else None)
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        role = "teacher" if name == "teacher" else "student"
        self.emit(Status(id=self.rid, message=f"loading {name} ({Path(model).name})"))
        if model in DEMO_NAMES:
            self._report_demo_build()
        path = resolve_model(model, role)
        if adapter:
            a = Path(adapter).expanduser()
            if not (a / "adapters.safetensors").is_file():
                raise ModelError(
                    f"adapter: {a} has no adapters.safetensors (train a domain "
                    "first, or pick its folder)"
                )
        loaded = Loaded(*load_model(path, role, adapter), str(path))
        self.loaded[key] = loaded
        while len(self.loaded) > MAX_LOADED:
            self.loaded.popitem(last=False)
            release()
        return loaded

    def _report_demo_build(self) -> None:
        """The shipped demo pair is unpacked in about a second and reports nothing; if it is
        missing or damaged the pair is trained (the hook below runs then): say how far."""
        from kd_core import demo
        from kd_tui.model_check import DEMO_TRAIN_TIME

        last = [-1]

        def hook(what: str, done: int, total: int) -> None:
            pct = done * 100 // max(1, total)
            if pct != last[0]:
                last[0] = pct
                message = (
                    f"training the demo pair (no usable shipped copy; {DEMO_TRAIN_TIME}): "
                    f"{what} {pct}%"
                )
                self.emit(Status(id=self.rid, message=message))

        demo.set_build_progress(hook)

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, req: Generate) -> None:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        from kd_core.generate import format_prompt

        prompt = str(req.prompt)
        temp = float(req.temperature)
        max_tokens = max(1, int(req.max_tokens))
        streams: dict[str, Any] = {}
        tokens: dict[str, list[int]] = {}
        texts: dict[str, str] = {}
        for slot in req.slots:
            try:
                lm = self.get(slot)
            except Exception as e:
                self.emit(ErrorReply(id=self.rid, slot=slot.name, message=one_line(e)))
                continue
            ids = format_prompt(lm.tokenizer, prompt)
            streams[slot.name] = stream_generate(
                lm.model, lm.tokenizer, ids, max_tokens=max_tokens, sampler=make_sampler(temp=temp)
            )
            tokens[slot.name] = []
            texts[slot.name] = ""
        mx.random.seed(int(req.seed))
        self.emit(Status(id=self.rid, message="generating"))
        self._round_robin(streams, tokens, texts)
        self.emit(Finished(id=self.rid))

    def _round_robin(
        self, streams: dict[str, Any], tokens: dict[str, list[int]], texts: dict[str, str]
    ) -> None:
        """One token per model in turn, so the answers grow side by side; each ends with Done
        (finish_reason "cancelled" for those a cancel cut short)."""
        active = list(streams)
        try:
            while active:
                for name in list(active):
                    self.check_cancel()
                    try:
                        r = next(streams[name])
                    except StopIteration:
                        r = None
                    if r is None or r.finish_reason is not None:
                        if r is not None:
                            self._token(name, r, tokens, texts)
                        reason = r.finish_reason if r is not None else "stop"
                        self.emit(
                            Done(
                                id=self.rid,
                                slot=name,
                                tokens=tokens[name],
                                text=texts[name],
                                finish_reason=reason,
                            )
                        )
                        active.remove(name)
                        continue
                    self._token(name, r, tokens, texts)
        except Stopped:
            for name in active:
                self.emit(
                    Done(
                        id=self.rid,
                        slot=name,
                        tokens=tokens[name],
                        text=texts[name],
                        finish_reason="cancelled",
                    )
                )

    def _token(
        self, name: str, r: Any, tokens: dict[str, list[int]], texts: dict[str, str]
    ) -> None:
        # stream_generate's last response repeats the EOS token when it stopped on one.
        if r.finish_reason == "stop":
            if r.text:
                texts[name] += r.text
                self.emit(Token(id=self.rid, slot=name, text=r.text, token=None))
            return
        tokens[name].append(int(r.token))
        texts[name] += r.text
        self.emit(Token(id=self.rid, slot=name, text=r.text, token=int(r.token)))

    # ---- token inspector ----------------------------------------------------------------------
    def inspect(self, req: Inspect) -> None:
        from kd_core.generate import format_prompt

        prompt = str(req.prompt)
        answer = [int(t) for t in req.answer][:MAX_INSPECT_POSITIONS]
        k = max(1, min(50, int(req.top_k)))
        slots = list(req.slots)
        if not slots:
            raise ValueError("inspect: no slots")
        if not answer:
            self.emit(Inspection(id=self.rid, positions=[]))
            return
        ref_slot = slots[0]
        ref = self.get(ref_slot)
        ref_lp = logprobs(ref.model, format_prompt(ref.tokenizer, prompt), answer)  # [n, V]
        ref_tok = ref.tokenizer
        pieces = [ref_tok.decode([t]) for t in answer]
        positions: list[Position] = [
            {
                "index": i,
                "token": token_label(pieces[i]),
                "slots": {ref_slot.name: describe(ref_lp[i], ref_tok, answer[i], k)},
            }
            for i in range(len(answer))
        ]
        for slot in slots[1:]:
            try:
                lm = self.get(slot)
            except Exception as e:
                self.emit(ErrorReply(id=self.rid, slot=slot.name, message=one_line(e)))
                continue
            same = same_tokenizer(ref_tok, lm.tokenizer)
            one_to_one: dict[int, int] = {}
            if same:
                ids, where = answer, list(range(len(answer)))
            else:  # another vocabulary: its own tokens of the same text, aligned by characters
                ids, where, one_to_one = realign(answer, ref_tok, lm.tokenizer)
            lp = logprobs(lm.model, format_prompt(lm.tokenizer, prompt), ids)
            shared = None if same else shared_ids(ref_tok, lm.tokenizer, ref_lp, lp)
            for i, pos in enumerate(positions):
                j = where[i]
                own = ids[j] if j < len(ids) else None
                d: SlotView = describe(lp[j], lm.tokenizer, own, k) if j < len(ids) else {"top": []}
                if same:
                    d["kl"] = kl(ref_lp[i], lp[j])
                    d["agree"] = int(np.argmax(ref_lp[i])) == int(np.argmax(lp[j]))
                elif i in one_to_one and shared is not None:
                    # A one-token span on both sides: the next-token distributions compare
                    # over the tokens both vocabularies share (as align training does).
                    t_ids, s_ids = shared
                    d["kl"] = kl(ref_lp[i][t_ids], lp[one_to_one[i]][s_ids])
                    top_t = int(np.argmax(ref_lp[i][t_ids]))
                    d["agree"] = top_t == int(np.argmax(lp[one_to_one[i]][s_ids]))
                else:
                    d["kl"] = None
                    a = pos["slots"][ref_slot.name].get("top", [])
                    d["agree"] = bool(a and d["top"] and a[0][0].strip() == d["top"][0][0].strip())
                pos["slots"][slot.name] = d
        self.emit(Inspection(id=self.rid, positions=positions))


def parse_request(line: str) -> Request | Rejected:
    """One input line as a request; what cannot be served becomes a Rejected that keeps the
    line's id when it has one (so the client can match the error to its request)."""
    try:
        d = json.loads(line)
    except ValueError:
        return Rejected(None, f"not a JSON request: {line[:80]!r}")
    if not isinstance(d, dict):
        return Rejected(None, f"not a JSON request: {line[:80]!r}")
    try:
        return request_from_dict(d)
    except ValueError as e:
        return Rejected(d.get("id"), one_line(e))


def logprobs(model: Any, prompt_ids: list[int], answer: list[int]) -> np.ndarray:
    """Teacher-forced forward of prompt + answer: log-probabilities predicting each answer
    token ([len(answer), V]); row i is the distribution the token at position i came from."""
    import mlx.core as mx

    seq = list(prompt_ids) + list(answer)
    logits = model(mx.array([seq[:-1]], dtype=mx.int32))[0].astype(mx.float32)
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    start = len(prompt_ids) - 1
    out = lp[start : start + len(answer)]
    mx.eval(out)
    return np.array(out)


def describe(lp: np.ndarray, tokenizer: Any, token: int | None, k: int) -> SlotView:
    top = np.argpartition(-lp, min(k, lp.shape[0] - 1))[:k]
    top = top[np.argsort(-lp[top])]
    return {
        "top": [[token_label(tokenizer.decode([int(t)])), float(np.exp(lp[t]))] for t in top],
        "p_token": float(np.exp(lp[token])) if token is not None and token < len(lp) else None,
    }


def kl(p_lp: np.ndarray, q_lp: np.ndarray) -> float:
    """KL(P || Q) over the shared id range, each renormalised there (as training compares)."""
    n = min(p_lp.shape[0], q_lp.shape[0])
    p, q = p_lp[:n].astype(np.float64), q_lp[:n].astype(np.float64)
    p = p - np.logaddexp.reduce(p)
    q = q - np.logaddexp.reduce(q)
    return max(0.0, float(np.sum(np.exp(p) * (p - q))))


_SAME_CACHE: dict[tuple[int, int], bool] = {}


def same_tokenizer(a: Any, b: Any) -> bool:
    """Token strings agree over the shared id range (ids can be compared one to one)."""
    if a is b:
        return True
    key = (id(a), id(b))
    if key not in _SAME_CACHE:
        from kd_core.vocab.plan import token_strings

        sa, sb = token_strings(a), token_strings(b)
        n = min(len(sa), len(sb))
        _SAME_CACHE[key] = n > 0 and sa[:n] == sb[:n]
    return _SAME_CACHE[key]


_SHARED_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}


def shared_ids(
    a: Any, b: Any, a_lp: np.ndarray, b_lp: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(a's ids, b's ids) of the tokens both vocabularies have, by normalised string."""
    key = (id(a), id(b))
    if key not in _SHARED_CACHE:
        from kd_core.vocab.plan import VocabError, plan_vocab_alignment

        try:
            al = plan_vocab_alignment(a, b, a_lp.shape[-1], b_lp.shape[-1], "align")
            _SHARED_CACHE[key] = (al.teacher_ids, al.student_ids)
        except VocabError:
            _SHARED_CACHE[key] = None
    return _SHARED_CACHE[key]


def realign(
    answer: list[int], ref_tok: Any, tokenizer: Any
) -> tuple[list[int], list[int], dict[int, int]]:
    """The reference answer's text in another tokenizer's own tokens: (its ids, for each
    reference position the first token of its span, {reference position: token} for the
    spans one token on both sides). Falls back to offsets alone if alignment fails."""
    from kd_core.vocab.spans import AlignmentError, align_ends, decoded_ends, token_ends

    try:
        text, t_ends = decoded_ends(ref_tok, answer)
        s_ids, s_ends = token_ends(tokenizer, text)
        spans = align_ends(text, answer, t_ends, s_ids, s_ends).spans
    except AlignmentError:
        ids, where = retokenize([ref_tok.decode([t]) for t in answer], tokenizer)
        return ids, where, {}
    if not s_ids:
        return [0], [0] * len(answer), {}
    where = [0] * len(answer)
    one: dict[int, int] = {}
    for sp in spans:
        for i in range(*sp.teacher):
            where[i] = sp.student[0]
        if sp.one_to_one:
            one[sp.teacher[0]] = sp.student[0]
    return s_ids, where, one


def retokenize(pieces: list[str], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Encode the reference answer with another tokenizer; map each reference position to the
    first of its tokens that ends past the reference token's start (character offsets)."""
    text = "".join(pieces)
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)] or [0]
    ends, acc = [], ""
    for t in ids:
        acc += tokenizer.decode([t])
        ends.append(len(acc))
    where, start, j = [], 0, 0
    for piece in pieces:
        while j < len(ids) - 1 and ends[j] <= start:
            j += 1
        where.append(j)
        start += len(piece)
    return ids, where


# ---- the Models pane's tokenizer verdict --------------------------------------------------
def verdict(teacher: str, student: str, strategy: str = "auto") -> dict[str, Any]:
    """What plan_vocab_alignment decides for the pair under the configured vocab_strategy."""
    from mlx_lm.utils import load_tokenizer

    from kd_core.models.load import model_info
    from kd_core.vocab.plan import VocabError, plan_vocab_alignment

    t_path, s_path = Path(teacher), Path(student)
    try:
        t_tok, s_tok = load_tokenizer(t_path), load_tokenizer(s_path)
        t_size = model_info(t_path).vocab_size or len(t_tok.get_vocab())
        s_size = model_info(s_path).vocab_size or len(s_tok.get_vocab())
        a = plan_vocab_alignment(t_tok, s_tok, t_size, s_size, strategy)
    except VocabError as e:
        # "auto" refused: the vocabularies share too little; a strategy the user set was refused
        kind = "none" if strategy == "auto" else "refused"
        return {"strategy": kind, "asked": strategy, "explanation": one_line(e)}
    except Exception as e:
        return {"strategy": "error", "explanation": f"cannot compare the tokenizers: {one_line(e)}"}
    return {
        "strategy": a.strategy,
        "identical": a.identical,
        "shared": a.shared,
        "explanation": a.explanation,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Replies go to the real stdout; anything a library prints goes to stderr instead, so
    # a stray print can never corrupt the protocol.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["verdict"] and len(argv) in (3, 4):
        proto.write(json.dumps(verdict(*argv[1:])) + "\n")
        proto.flush()
        return 0
    Worker(proto).serve(sys.stdin)
    proto.flush()
    return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter teardown: MLX's thread-local streams can abort at exit
    # (docs/ARCHITECTURE.md), and every reply is already flushed.
    sys.stderr.flush()
    os._exit(code)
