"""A row rendered for one model: the exact string its tokenizer receives, the token ids, and the
mask of the tokens trained (the assistant's given text).

How the mask is built, the same way for every template:

1. Render. A tokenizer with a chat template renders the conversation with
   `apply_chat_template(messages, tools=..., tokenize=False, **chat_template_kwargs)` (a
   `completions` row as user = prompt, assistant = completion) and the string is encoded in one
   pass without added special tokens, exactly as `apply_chat_template(tokenize=True)` does (the
   template writes BOS itself). With no template (and for `text` rows) the rendering is plain
   (`_plain`): the tokenizer adds its own BOS as `kd_core.generate.format_prompt` does,
   and each answer ends with the EOS token.
2. Find each assistant content's character span in the string, in order. Where the template
   writes an answer is seen by rendering the conversation again with a sentinel in place of
   that answer: the sentinel's position, if the answer is written there (as written, or
   trimmed: Llama-2 trims). Otherwise (a template whose text before the answer depends on the
   answer) the answer is searched for after the previous answer and the messages between, as
   written or trimmed; so neither the user's earlier "Say hi" nor the "<think>" a template puts
   before the answer is taken for the answer "hi". An answer the template does not write as
   given (Qwen3 drops earlier turns' reasoning) is a DataFileError when it is trained.
3. End of turn: when the characters after the content are white space then a stop marker (the
   EOS token, any of an mlx-lm wrapper's `eos_token_ids`, or a `stop_tokens` string), those
   characters are trained too: the student learns to stop as its template expects (the demo's
   "\\n<|eos|>", Llama-2's " </s>", ChatML's "<|im_end|>" when it is the EOS).
4. Characters to tokens through the fast tokenizer's offsets: a token is trained when its
   characters overlap a trained range, so a token straddling a boundary (SentencePiece's
   "▁Hello" holding the template's space) is trained: the student must produce it. A token
   covering no character counts as lying at its position; tokens the tokenizer adds that are
   not in the string (a post-processor's BOS) are never trained. At the end the same rule
   trains a token that runs into the template's text (GPT-2 reads "noon.<|im_end|>" as
   "noon", ".<", ...): what the student must write to end its answer that way.
   A template whose end of turn is not an EOS of the tokenizer's (ChatML's "<|im_end|>" on a
   tokenizer whose EOS is "<|endoftext|>") needs it in `stop_tokens` to have it trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kd_core.data_files.errors import DataFileError
from kd_core.data_files.formats import ChatRow, CompletionRow, Message, PromptRow, Row, TextRow

TrainOn = Literal["all_assistant", "last"]


@dataclass(frozen=True)
class AssistantSpan:
    """One trained answer in a rendered string: its content is text[start:end]; text[end:stop_end]
    is the end-of-turn trained with it (stop_end == end when the template renders none)."""

    message: int  # index of the message in the conversation (1 for a completions row)
    start: int
    end: int
    stop_end: int


@dataclass(frozen=True)
class Rendered:
    text: str  # what the tokenizer encodes (a post-processor's BOS is not in it)
    ids: np.ndarray  # [n] int32
    offsets: np.ndarray  # [n, 2] int32: each token's characters text[s:e]
    trained: np.ndarray  # [n] bool: the token is a target (predicted from the tokens before)
    spans: tuple[AssistantSpan, ...]  # in order; the characters the loss meets on
    templated: bool  # rendered by the tokenizer's chat template


@dataclass(frozen=True)
class _Turns:
    """A row as a conversation: the messages, the tools, the indices of the answers."""

    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None
    answers: tuple[int, ...]


def backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind an mlx-lm TokenizerWrapper or a transformers fast
    tokenizer (offsets are read from it)."""
    for attr in ("_tokenizer", "backend_tokenizer"):
        inner = getattr(tokenizer, attr, None)
        if inner is not None and inner is not tokenizer:
            return backend(inner)
    if not hasattr(tokenizer, "encode_batch"):
        raise DataFileError(
            f"data: {type(tokenizer).__name__} is not a fast tokenizer (no offsets)"
        )
    return tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    # An mlx-lm wrapper may render through a Python renderer of its own, with no jinja string.
    flag = getattr(tokenizer, "has_chat_template", None)
    if isinstance(flag, bool):
        return flag
    return bool(getattr(tokenizer, "chat_template", None))


def _turns(row: Row, train_on: TrainOn) -> _Turns:
    if isinstance(row, ChatRow):
        answers = row.assistant_turns
        return _Turns(row.messages, row.tools, answers[-1:] if train_on == "last" else answers)
    if isinstance(row, CompletionRow):
        msgs = (Message("user", row.prompt), Message("assistant", row.completion))
        return _Turns(msgs, None, (1,))
    assert isinstance(row, PromptRow)
    return _Turns((Message("user", row.prompt),), None, ())


def _apply(
    tokenizer: Any, msgs: Sequence[Message], turns: _Turns, kwargs: Mapping[str, Any], gen: bool
) -> str:
    out = tokenizer.apply_chat_template(
        [m.as_dict() for m in msgs],
        tools=list(turns.tools) if turns.tools is not None else None,
        tokenize=False,
        add_generation_prompt=gen,
        **kwargs,
    )
    if not isinstance(out, str):
        raise DataFileError(f"data: the chat template returned {type(out).__name__}, not text")
    return out


# Put in place of one answer to see where the template writes it: private-use characters and
# no white space, so no template trims, escapes or matches it.
_SENTINEL = "\ue000kd-answer\ue001"


def _sentinel_at(
    tokenizer: Any, turns: _Turns, i: int, kwargs: Mapping[str, Any], gen: bool
) -> int | None:
    """Where the template writes message i's content: rendered with a sentinel in its place,
    everything before it is the same text as in the real rendering (unless the template reads
    the content itself before writing it: checked by the caller)."""
    msgs = list(turns.messages)
    msgs[i] = Message(msgs[i].role, _SENTINEL, msgs[i].extra)
    try:
        probe = _apply(tokenizer, msgs, turns, kwargs, gen)
    except Exception:  # a template that refuses the probe: the ordered search decides
        return None
    at = probe.find(_SENTINEL)
    return at if at >= 0 and probe.count(_SENTINEL) == 1 else None


def _search(text: str, content: str, lower: int) -> tuple[int, int] | None:
    """The first (start, end) of `content` from `lower`, trimmed if it is not there as
    written (Llama-2's template trims answers)."""
    for c in (content, content.strip()):
        at = text.find(c, lower)
        if at >= 0:
            return at, at + len(c)
    return None


def _find_contents(
    tokenizer: Any, turns: _Turns, text: str, kwargs: Mapping[str, Any], gen: bool, where: str
) -> dict[int, tuple[int, int]]:
    """(start, end) in `text` of every assistant content (step 2 of the module docstring).
    Every answer is located, trained or not, so that a later turn's search starts after it."""
    found: dict[int, tuple[int, int]] = {}
    cursor = 0
    pending: list[str] = []  # text of the messages since the last answer
    for i, m in enumerate(turns.messages):
        content = m.content or ""
        if m.role != "assistant" or not content.strip():
            pending.append(content)
            continue
        at = _sentinel_at(tokenizer, turns, i, kwargs, gen)
        span = None
        if at is not None and at >= cursor:
            span = next(
                ((at, at + len(c)) for c in (content, content.strip()) if text.startswith(c, at)),
                None,
            )
        if span is None:
            # The ordered search: step over the messages before it, where written as they are.
            for earlier in filter(None, pending):
                hit = text.find(earlier, cursor)
                cursor = hit + len(earlier) if hit >= 0 else cursor
            span = _search(text, content, cursor)
        pending.clear()
        if span is None and i not in turns.answers:
            continue  # e.g. reasoning a template drops from earlier turns: not trained anyway
        if span is None:
            raise DataFileError(
                f"data: {where}the chat template does not render assistant message {i} as "
                "written; its characters cannot be masked"
            )
        found[i] = span
        cursor = span[1]
    return found


def stop_markers(tokenizer: Any, stop_tokens: Iterable[str] = ()) -> tuple[str, ...]:
    """The strings that end an assistant turn: the EOS token, the token strings of an mlx-lm
    wrapper's eos_token_ids, and `stop_tokens`; longest first, so one is not cut short by a
    shorter marker it starts with."""
    marks = {s for s in stop_tokens if s}
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos:
        marks.add(eos)
    ids = getattr(tokenizer, "eos_token_ids", None)
    # An mlx-lm wrapper holds a set; a transformers tokenizer may answer with one id.
    ids = (ids,) if isinstance(ids, int) else tuple(ids or ())
    tok = backend(tokenizer)
    for i in ids:
        s = tok.id_to_token(int(i))
        if s:
            marks.add(s)
    return tuple(sorted(marks, key=lambda s: (-len(s), s)))


def _stop_end(text: str, end: int, markers: Sequence[str]) -> int:
    """Step 3 of the module docstring: the end of "white space + stop marker" after `end`, or
    `end` when no marker follows."""
    rest = text[end:]
    gap = len(rest) - len(rest.lstrip())
    for m in markers:
        if rest.startswith(m, gap):
            return end + gap + len(m)
    return end


def _eos_text(tokenizer: Any) -> str:
    """The EOS token as text, checked to read back as that one token ("" when there is none)."""
    eos, eos_id = getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, str) or not eos or eos_id is None:
        return ""
    if backend(tokenizer).encode(eos, add_special_tokens=False).ids != [int(eos_id)]:
        raise DataFileError(
            f"data: the tokenizer's EOS {eos!r} does not read back as one token; a plain "
            "rendering (no chat template) cannot end an answer with it"
        )
    return eos


def _plain(turns: _Turns, eos: str) -> tuple[str, tuple[AssistantSpan, ...]]:
    """The rendering without a chat template, format_prompt's convention turned into a
    conversation: each other message's text trimmed at its end + "\\n", each answer as written
    + EOS. A completions row is thus prompt + "\\n" + completion + EOS; tools are not shown."""
    text, spans = "", []
    for i, m in enumerate(turns.messages):
        if m.role != "assistant":
            text += (m.content or "").rstrip() + "\n"
        elif m.content is not None:
            start = len(text)
            text += m.content + eos
            if i in turns.answers:
                spans.append(AssistantSpan(i, start, start + len(m.content), len(text)))
    return text, tuple(spans)


def _trained(offsets: np.ndarray, added: np.ndarray, spans: Sequence[AssistantSpan]) -> np.ndarray:
    """Step 4 of the module docstring."""
    s, e = offsets[:, 0], offsets[:, 1]
    out = np.zeros(len(offsets), dtype=bool)
    for sp in spans:
        overlap = (s < sp.stop_end) & (e > sp.start) & (e > s)
        inside = (s == e) & (s >= sp.start) & (s < sp.stop_end)
        out |= overlap | inside
    return out & ~added


def _encode(
    tokenizer: Any, text: str, spans: tuple[AssistantSpan, ...], templated: bool
) -> Rendered:
    # A template writes BOS itself (apply_chat_template(tokenize=True) adds none); a plain
    # rendering gets the tokenizer's own, as format_prompt's encode() gives it.
    enc = backend(tokenizer).encode(text, add_special_tokens=not templated)
    ids = np.asarray(enc.ids, dtype=np.int32)
    offsets = np.asarray(enc.offsets, dtype=np.int32).reshape(len(ids), 2)
    added = np.asarray(enc.special_tokens_mask, dtype=bool)  # post-processor tokens only
    return Rendered(text, ids, offsets, _trained(offsets, added, spans), spans, templated)


def _render(
    tokenizer: Any,
    turns: _Turns,
    gen: bool,
    kwargs: Mapping[str, Any],
    stop_tokens: Iterable[str],
    where: str,
) -> Rendered:
    if not has_chat_template(tokenizer):
        return _encode(tokenizer, *_plain(turns, _eos_text(tokenizer)), templated=False)
    text = _apply(tokenizer, turns.messages, turns, kwargs, gen=gen)
    found = _find_contents(tokenizer, turns, text, kwargs, gen, where) if turns.answers else {}
    markers = stop_markers(tokenizer, stop_tokens)
    spans = tuple(
        AssistantSpan(i, found[i][0], found[i][1], _stop_end(text, found[i][1], markers))
        for i in turns.answers
    )
    return _encode(tokenizer, text, spans, templated=True)


_RESERVED = frozenset({"conversation", "messages", "tools", "tokenize", "add_generation_prompt"})


def template_kwargs(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """chat_template_kwargs, less the arguments rendering sets itself (refused, not
    silently overridden)."""
    kwargs = dict(given or {})
    if clash := sorted(_RESERVED & kwargs.keys()):
        raise DataFileError(f"data: chat_template_kwargs cannot set {', '.join(clash)}")
    return kwargs


def render_row(
    tokenizer: Any,
    row: Row,
    *,
    train_on: TrainOn = "all_assistant",
    chat_template_kwargs: Mapping[str, Any] | None = None,
    stop_tokens: Iterable[str] = (),
    source: str = "",
) -> Rendered:
    """`row` as `tokenizer`'s model receives it, with the assistant's given text trained (the
    module docstring says how). A prompts row renders the prompt ready for an answer, nothing
    trained. `source` (the file) prefixes error messages."""
    if train_on not in ("all_assistant", "last"):
        raise ValueError(f"train_on must be 'all_assistant' or 'last', got {train_on!r}")
    if isinstance(row, TextRow):  # no template: the whole text is the answer, EOS after it
        eos = _eos_text(tokenizer)
        span = AssistantSpan(0, 0, len(row.text), len(row.text) + len(eos))
        return _encode(tokenizer, row.text + eos, (span,), templated=False)
    where = f"{source} line {row.line}: " if source else f"row at line {row.line}: "
    kwargs = template_kwargs(chat_template_kwargs)
    gen = isinstance(row, PromptRow)
    return _render(tokenizer, _turns(row, train_on), gen, kwargs, stop_tokens, where)


def render_prompt(
    tokenizer: Any,
    row: Row,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    source: str = "",
) -> Rendered:
    """The prompt a teacher answers for `teacher_answers = "generate"`: the conversation before
    the row's last answer (a completions row's prompt), ready for the assistant's turn; nothing
    trained. A text row has no prompt (DataFileError)."""
    where = f"{source} line {row.line}: " if source else f"row at line {row.line}: "
    if isinstance(row, TextRow):
        raise DataFileError(f"data: {where}a text row has no prompt to answer")
    if isinstance(row, ChatRow):
        turns = _Turns(row.messages[: row.assistant_turns[-1]], row.tools, ())
    else:
        turns = _turns(row, "all_assistant")
        turns = _Turns(turns.messages[:1], None, ())
    return _render(tokenizer, turns, True, template_kwargs(chat_template_kwargs), (), where)
