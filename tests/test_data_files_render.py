"""kd_core.data_files rendering: the exact string each model's template gives a row, and a mask
that trains exactly the assistant's characters plus the template's end of turn, on the demo
pair's tokenizer and two real ones (../shared/fixtures: GPT-2 byte-level BPE with a ChatML
template, Llama-2 SentencePiece with a Llama-2 template)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlx_lm.utils import load_tokenizer

import kd_core
from kd_core.data_files import (
    ChatRow,
    CompletionRow,
    DataFileError,
    Message,
    PromptRow,
    Rendered,
    TextRow,
    render_prompt,
    render_row,
)
from kd_core.data_files.formats import classify_row
from kd_core.data_files.render import backend
from kd_core.generate import format_prompt

DEMO = Path(kd_core.__file__).parent / "demo" / "pair" / "teacher"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tokenizers"

# ChatML that shows the tools in the system turn (as Qwen's does) and ends turns with
# <|im_end|>: not a token of GPT-2's, so it is several tokens and passed as a stop marker.
CHATML = (
    "{% for m in messages %}{% if loop.first and tools %}<|im_start|>system\n"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n{% endif %}"
    "Tools: {{ tools | tojson }}<|im_end|>\n{% if m['role'] != 'system' %}<|im_start|>"
    "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 2: the system prompt (and here the tools) inside the first [INST], answers trimmed
# and closed by " </s>", BOS written by the template before each [INST].
LLAMA2 = (
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages if m['role'] == 'system' %}{% set ns.sys = m['content'] %}{% endfor %}"
    "{% if tools %}{% set ns.sys = ns.sys + '\n\nTools: ' + (tools | tojson) %}{% endif %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and ns.sys %}<<SYS>>\n{{ ns.sys }}\n<</SYS>>\n\n{% endif %}"
    "{{ m['content'] | trim }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

TOOLS = [{"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}]
# "hi" is also in the user's first turn: the answer must be found after it, not in it.
CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "What time is it, in café terms?"},
        {"role": "assistant", "content": "Time for a café crème — it’s noon."},
    ],
    "tools": TOOLS,
}
ANSWERS = ["hi", "Time for a café crème — it’s noon."]


def chat_row(obj: dict[str, Any] = CONVERSATION) -> ChatRow:
    _, row = classify_row(obj, 1)
    assert isinstance(row, ChatRow)
    return row


def fixture_tokenizer(name: str, tmp: Path, template: str | None = None) -> Any:
    src = FIXTURES / name
    if not src.is_dir():
        pytest.skip(f"{src} is absent (the fixtures live beside the project, not in a clone)")
    out = tmp / f"{name}-{'chat' if template else 'plain'}"
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "tokenizer.json.gz", "rb") as fh, open(out / "tokenizer.json", "wb") as o:
        shutil.copyfileobj(fh, o)
    config = json.loads((src / "tokenizer_config.json").read_text())
    if template:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def demo() -> Any:
    return load_tokenizer(DEMO)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


def trained_runs(tokenizer: Any, r: Rendered) -> list[str]:
    """The decoded text of each maximal run of trained tokens."""
    runs: list[list[int]] = []
    for i, (tok, on) in enumerate(zip(r.ids.tolist(), r.trained.tolist(), strict=True)):
        if on:
            if i == 0 or not r.trained[i - 1]:
                runs.append([])
            runs[-1].append(tok)
    return [backend(tokenizer).decode(run, skip_special_tokens=False) for run in runs]


def chat_ids(tokenizer: Any, messages: list[dict], **kw: Any) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def check_exact_ids(tokenizer: Any, r: Rendered, obj: dict[str, Any]) -> None:
    """What the model receives: the template's own tokenization, token for token."""
    assert r.templated
    assert r.ids.tolist() == chat_ids(tokenizer, obj["messages"], tools=obj.get("tools"))
    assert r.text == tokenizer.apply_chat_template(
        obj["messages"], tools=obj.get("tools"), tokenize=False
    )


def test_golden_mask_demo_template(demo: Any) -> None:
    r = render_row(demo, chat_row())
    check_exact_ids(demo, r, CONVERSATION)
    # The demo template closes an answer with "\n<|eos|>": trained, so the student stops.
    assert trained_runs(demo, r) == [a + "\n<|eos|>" for a in ANSWERS]
    assert [r.text[s.start : s.end] for s in r.spans] == ANSWERS
    assert [s.message for s in r.spans] == [2, 4]
    assert r.spans[0].start > r.text.index("Say hi") + len("Say hi")
    assert all(r.text[s.end : s.stop_end] == "\n<|eos|>" for s in r.spans)


def test_golden_mask_llama2_template_sentencepiece(tmp: Path) -> None:
    tok = fixture_tokenizer("llama-spm", tmp, LLAMA2)
    r = render_row(tok, chat_row())
    check_exact_ids(tok, r, CONVERSATION)
    assert "Tools: [{" in r.text and "<<SYS>>\nYou are terse." in r.text
    # " </s>" after each answer is the end of turn; "▁hi" holds the template's space before
    # the answer (a straddling token: trained, the student must write it).
    assert trained_runs(tok, r) == [a + " </s>" for a in ANSWERS]
    pieces = backend(tok).encode(r.text, add_special_tokens=False).tokens
    first = int(np.argmax(r.trained))
    assert pieces[first] == "▁hi" and pieces[first - 1] == "]"
    # Both BOS tokens the template wrote stay untrained.
    assert not r.trained[r.ids == tok.bos_token_id].any()


def test_golden_mask_chatml_template_byte_level(tmp: Path) -> None:
    tok = fixture_tokenizer("gpt-2", tmp, CHATML)
    r = render_row(tok, chat_row(), stop_tokens=("<|im_end|>",))
    check_exact_ids(tok, r, CONVERSATION)
    assert r.text.startswith("<|im_start|>system\nYou are terse.\n\nTools: [{")
    assert trained_runs(tok, r) == [a + "<|im_end|>" for a in ANSWERS]
    # Without the marker (not GPT-2's EOS) only the answers' own tokens are trained, and a
    # token straddling the end: GPT-2 reads ".<" of "noon.<|im_end|>" as one token.
    bare = render_row(tok, chat_row())
    assert [s.stop_end for s in bare.spans] == [s.end for s in bare.spans]
    assert trained_runs(tok, bare) == ["hi", ANSWERS[1] + "<"]


def test_train_on_last_trains_only_the_last_answer(demo: Any, tmp: Path) -> None:
    for tok in (demo, fixture_tokenizer("llama-spm", tmp, LLAMA2)):
        every = render_row(tok, chat_row())
        last = render_row(tok, chat_row(), train_on="last")
        assert last.text == every.text and np.array_equal(last.ids, every.ids)
        assert len(last.spans) == 1 and last.spans[0] == every.spans[1]
        assert not (last.trained & ~every.trained).any()
        assert last.trained.sum() < every.trained.sum()
    with pytest.raises(ValueError, match="train_on"):
        render_row(demo, chat_row(), train_on="first")  # type: ignore[arg-type]


def test_chat_template_kwargs_reach_the_template(tmp: Path) -> None:
    thinking = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' and "
        "enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
        "{{ m['content'] }}<|endoftext|>{% endfor %}"
    )
    tok = fixture_tokenizer("gpt-2", tmp, thinking)
    row = chat_row({"messages": CONVERSATION["messages"][1:3]})
    off = render_row(tok, row, chat_template_kwargs={"enable_thinking": False})
    on = render_row(tok, row, chat_template_kwargs={"enable_thinking": True})
    assert "<think></think>hi" in off.text and "<think>" not in on.text
    with pytest.raises(DataFileError, match="cannot set add_generation_prompt"):
        render_row(tok, row, chat_template_kwargs={"add_generation_prompt": True})
    # The answer "hi" is not taken from "<think>"; GPT-2's EOS ends the turn without a stop
    # marker given: found from the tokenizer.
    assert trained_runs(tok, off) == trained_runs(tok, on) == ["hi<|endoftext|>"]


def test_answer_not_rendered_as_written(demo: Any, tmp: Path) -> None:
    # Like Qwen3 dropping earlier turns' reasoning: only the last answer rendered as written.
    drops = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' and not "
        "loop.last %}[earlier answer]{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
    )
    tok = fixture_tokenizer("gpt-2", tmp, drops)
    last = render_row(tok, chat_row(), train_on="last")
    assert [last.text[s.start : s.end] for s in last.spans] == [ANSWERS[1]]
    with pytest.raises(DataFileError) as e:
        render_row(tok, chat_row(), source="data/train.jsonl")
    msg = str(e.value)
    assert "\n" not in msg and "data/train.jsonl line 1:" in msg and "message 2" in msg


def test_template_that_reads_the_answer_before_writing_it(tmp: Path) -> None:
    # What comes before a long answer depends on the answer: the sentinel's position is off,
    # so the answers are searched for in order, and the user's "hi" is still not the answer.
    reads = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] | length > 30 %}"
        "[long]{% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    tok = fixture_tokenizer("gpt-2", tmp, reads)
    r = render_row(tok, chat_row())
    assert "[long]" + ANSWERS[1] in r.text
    assert [r.text[s.start : s.end] for s in r.spans] == ANSWERS
    assert r.spans[0].start == r.text.index("<|assistant|>hi") + len("<|assistant|>")


def test_completions_rendered_by_the_template(demo: Any) -> None:
    row = CompletionRow(5, "What is 2+2?", "Four.")
    r = render_row(demo, row)
    msgs = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": "Four."}]
    assert r.ids.tolist() == chat_ids(demo, msgs)
    assert trained_runs(demo, r) == ["Four.\n<|eos|>"] and r.spans[0].message == 1
    # Its prompt, ready for the teacher to answer, is today's format_prompt.
    p = render_prompt(demo, row)
    assert p.ids.tolist() == format_prompt(demo, row.prompt) and not p.trained.any()


def test_tokenizers_without_a_chat_template(tmp: Path) -> None:
    for name, bos in (("gpt-2", ""), ("llama-spm", "<s>")):
        tok = fixture_tokenizer(name, tmp)
        eos = tok.eos_token
        comp = render_row(tok, CompletionRow(1, "Translate: chat ", "cat"))
        # format_prompt's convention: prompt trimmed + "\n", then the answer and EOS.
        assert not comp.templated and comp.text == f"Translate: chat\ncat{eos}"
        assert trained_runs(tok, comp) == [f"cat{eos}"] or trained_runs(tok, comp) == [f" cat{eos}"]
        prompt = render_row(tok, PromptRow(2, "Translate: chat"))
        assert prompt.ids.tolist() == format_prompt(tok, "Translate: chat")
        assert np.array_equal(comp.ids[: len(prompt.ids)], prompt.ids)
        chat = render_row(tok, chat_row())
        assert chat.text.startswith("You are terse.\nSay hi\nhi" + eos)
        runs = [s.strip() for s in trained_runs(tok, chat)]
        assert runs == [a + eos for a in ANSWERS]
        # The tokenizer's own BOS (not in the string) is never trained.
        first = backend(tok).id_to_token(int(chat.ids[0]))
        assert (first == bos) == bool(bos) and not chat.trained[0]


def test_text_rows_train_every_token_and_eos(demo: Any, tmp: Path) -> None:
    for tok in (demo, fixture_tokenizer("llama-spm", tmp, LLAMA2)):
        r = render_row(tok, TextRow(1, "Plain text, trained whole."))
        assert not r.templated and r.text == "Plain text, trained whole." + tok.eos_token
        added = np.asarray(backend(tok).encode(r.text).special_tokens_mask, dtype=bool)
        assert np.array_equal(r.trained, ~added)  # all but a BOS the tokenizer adds
        assert trained_runs(tok, r) == [r.text]


def test_tool_call_turn_rendered_untrained(demo: Any) -> None:
    row = ChatRow(
        1,
        (
            Message("user", "Time?"),
            Message("assistant", None, (("tool_calls", [{"function": {"name": "clock"}}]),)),
            Message("tool", "12:00", (("tool_call_id", "1"),)),
            Message("assistant", "Noon."),
        ),
        tuple(TOOLS),
    )
    r = render_row(demo, row)
    assert [s.message for s in r.spans] == [3] and trained_runs(demo, r) == ["Noon.\n<|eos|>"]


def test_transformers_tokenizer_renders_as_the_mlx_wrapper(tmp: Path) -> None:
    from transformers import AutoTokenizer

    wrapped = fixture_tokenizer("llama-spm", tmp, LLAMA2)
    hf = AutoTokenizer.from_pretrained(tmp / "llama-spm-chat")
    a, b = render_row(wrapped, chat_row()), render_row(hf, chat_row())
    assert a.text == b.text and a.spans == b.spans
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.trained, b.trained)


def test_chat_prompt_is_the_conversation_before_the_last_answer(demo: Any) -> None:
    p = render_prompt(demo, chat_row())
    before = CONVERSATION["messages"][:4]
    assert p.ids.tolist() == chat_ids(demo, before, add_generation_prompt=True)
    assert p.text.endswith("<|assistant|>\n") and not p.trained.any() and p.spans == ()
    with pytest.raises(DataFileError, match="line 3: a text row has no prompt"):
        render_prompt(demo, TextRow(3, "t"))
