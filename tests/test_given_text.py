"""Given text (issue 25): the teacher teacher-forced on a data file's answers, never sampling;
its targets equal a plain teacher forward; keyed by the data's content; a run over it trains
only the assistant's tokens and resumes bit for bit; across tokenizers the answers align by
their characters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.utils import load_tokenizer

import kd_core.generate as generate
import kd_core.teacher.teacher_pass as teacher_pass
from kd_core.config import KDConfig
from kd_core.data_files import CompletionRow
from kd_core.data_files.domain import DataSettings, load_data_domain
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import Step
from kd_core.examples.given import given_aligned_examples, student_rendering
from kd_core.losses.aligned import ONE_TO_ONE, SPAN_KIND
from kd_core.models.identity import identify_model
from kd_core.run.control import RunControl
from kd_core.teacher.given import GivenPass, given_key, sequences_only, teacher_rows
from kd_core.vocab.plan import plan_vocab_alignment

COMPLETIONS = [
    {"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}; the sum of {i} twice."}
    for i in range(24)
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": f"Say {i}"},
            {"role": "assistant", "content": f"{i}, said once."},
            {"role": "user", "content": "Again, in café terms?"},
            {"role": "assistant", "content": f"Café {i} — again."},
        ],
        "tools": [{"type": "function", "function": {"name": "clock"}}],
    }
    for i in range(12)
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def cfg(out: Path, **kw) -> KDConfig:
    base = dict(
        num_iters=6, batch_size=2, max_seq_length=64, learning_rate=0.01, steps_per_save=100,
        output=str(out), top_k=8,
    )  # fmt: skip
    return KDConfig(**{**base, **kw})


def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the teacher sampled on given text")

    monkeypatch.setattr(generate, "sample_batch", refuse)
    monkeypatch.setattr(generate, "generate_responses", refuse)
    monkeypatch.setattr(teacher_pass, "generate_responses", refuse)
    monkeypatch.setattr(sys.modules["mlx_lm.generate"], "BatchGenerator", refuse)


def test_given_pass_samples_nothing_and_equals_a_teacher_forward(tiny_pair, tmp_path, monkeypatch):
    no_sampling(monkeypatch)
    data = load_data_domain(str(write_jsonl(tmp_path / "d.jsonl", COMPLETIONS)), DataSettings(), 0)
    c = cfg(tmp_path / "o", temperature=2.0)
    tok = load_tokenizer(tiny_pair.teacher)
    rows = data.split.train
    given, skipped = teacher_rows(
        tok, rows, train_on="all_assistant", chat_template_kwargs=None, max_seq_length=64,
        source="d.jsonl",
    )  # fmt: skip
    assert skipped == 0 and len(given) == len(rows)
    model, _ = load(str(tiny_pair.teacher))
    gpass = GivenPass(tmp_path / "cache", identify_model(tiny_pair.teacher, "teacher"), c)
    out = gpass.run("d", rows, given, lambda: (model, tok))
    for i, g in enumerate(given[:5]):
        logits = model(mx.array(g.sequence[None, :-1])).astype(mx.float32) / c.temperature
        lp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
        at = lp[g.prompt_len - 1 :]
        want = np.sort(at, axis=-1)[:, ::-1][:, : c.top_k]
        got = out.topk_logprobs[i]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), atol=2e-3)
        picked = np.take_along_axis(at, out.topk_ids[i], axis=-1)
        np.testing.assert_allclose(picked, got, atol=2e-3)
    # A second pass reads the cache: the teacher is not loaded again.
    again = gpass.run("d", rows, given, lambda: pytest.fail("teacher loaded on a cache hit"))
    assert again.from_cache and again.path == out.path
    for a, b in zip(again.topk_logprobs, out.topk_logprobs, strict=True):
        assert np.array_equal(a, b)


def test_key_follows_the_content_of_every_row(tiny_pair):
    tok = load_tokenizer(tiny_pair.teacher)
    teacher = identify_model(tiny_pair.teacher, "teacher")
    rows = [CompletionRow(i + 1, r["prompt"], r["completion"]) for i, r in enumerate(COMPLETIONS)]
    swapped = list(rows)
    swapped[7] = CompletionRow(8, rows[7].prompt, rows[7].completion.replace("twice", "doubled"))

    def key(rs, train_on="all_assistant"):
        given, _ = teacher_rows(
            tok, rs, train_on=train_on, chat_template_kwargs=None, max_seq_length=64, source="x"
        )
        return given_key(teacher, rs, given)

    assert key(rows) == key(list(rows))
    assert key(swapped) != key(rows)
    assert key(rows[:-1]) != key(rows)


def test_data_domain_runs_trains_only_answers_and_resumes_bit_exact(
    tiny_pair, tmp_path, monkeypatch
):
    no_sampling(monkeypatch)
    spec = str(write_jsonl(tmp_path / "chat.jsonl", CHAT))
    dom = load_data_domain(spec, DataSettings(), 0)
    assert dom.answers == "given" and dom.format == "chat"
    control = RunControl()

    def stop_at_3(e):
        if isinstance(e, Step) and e.step == 3:
            control.request_stop()

    c = cfg(tmp_path / "run", steps_per_save=3)
    pair = (str(tiny_pair.teacher), str(tiny_pair.student))
    r = TrueKnowledgeDistiller(*pair, c, on_event=stop_at_3, control=control).run({"chat": dom})
    assert r[0].stopped and r[0].steps == 3
    r2 = TrueKnowledgeDistiller(*pair, c).run({"chat": dom}, resume=True)[0]
    assert r2.resumed_from == 3 and r2.steps == 6
    straight = TrueKnowledgeDistiller(*pair, cfg(tmp_path / "straight")).run({"chat": dom})[0]
    assert straight.steps == 6 and straight.examples == len(dom.split.train) == len(CHAT) - 1
    a = mx.load(str(tmp_path / "run" / "chat" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "straight" / "chat" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k
    summary = json.loads((tmp_path / "straight" / "kd_summary.json").read_text())
    block = summary["domains"]["chat"]["data"]
    assert block["format"] == "chat" and block["rows"] == len(CHAT)
    assert block["given_or_generated"] == "given" and block["examples"] == len(CHAT) - 1
    assert block["turns_trained"] == 2 * block["examples"]
    assert block["held_out"]["from"] == "seeded" and len(block["held_out"]["lines"]) == 1


def test_aligned_given_text_meets_on_the_answer_characters(tiny_pair, sp_student):
    """Teacher (byte-level BPE) and student (SentencePiece-style) each read the conversation
    in their own rendering; the student trains exactly its tokens of the two answers and
    their end of turn, and every KD span covers the same characters on both sides."""
    t_tok, s_tok = load_tokenizer(tiny_pair.teacher), load_tokenizer(sp_student)
    given, _ = teacher_rows(
        t_tok, load_chat_rows(), train_on="all_assistant", chat_template_kwargs=None,
        max_seq_length=128, source="x",
    )  # fmt: skip
    student = student_rendering(s_tok, [g.row for g in given], "all_assistant", None, "x")
    al = plan_vocab_alignment(t_tok, s_tok, 384, 424, "align", "pieces")
    built = given_aligned_examples(given, student, sequences_only(given, 384), al, True, 128, 4)
    assert len(built.examples) == len(given)
    for g, s, ex in zip(given, student, built.examples, strict=True):
        # Exactly the answers' characters (and their end of turn) are trained.
        off = s.offsets[ex.prompt_len :][ex.valid]
        covered = np.zeros(len(s.text), bool)
        for a, b in off:
            covered[a:b] = True
        want = np.zeros(len(s.text), bool)
        for sp in s.spans:
            want[sp.start : sp.stop_end] = True
        assert np.array_equal(covered, want)
        # Every KD span pairs the same characters of the same answer on both sides.
        spans = ex.targets
        anchors = np.flatnonzero(spans.span_kind & SPAN_KIND)
        assert len(anchors) > 0
        # Both templates end a turn with "\n<|eos|>": cut token by token, the EOS its own span.
        last = int(np.flatnonzero(ex.valid)[-1])
        assert spans.span_kind[last] & SPAN_KIND == ONE_TO_ONE and spans.span_len[last] == 1
        for j in anchors:
            t0, t1 = spans.teacher_span[j]
            s_chars = _turn_chars(s, ex.prompt_len + j, ex.prompt_len + j + spans.span_len[j])
            t_chars = _turn_chars(g.rendered, g.prompt_len + t0, g.prompt_len + t1)
            assert s_chars == t_chars


def _turn_chars(r, a: int, b: int) -> tuple[int, int, int]:
    """(answer index, first char, end char) of tokens [a, b) relative to their answer."""
    lo, hi = int(r.offsets[a, 0]), int(r.offsets[b - 1, 1])
    k = next(i for i, sp in enumerate(r.spans) if lo < sp.stop_end and hi > sp.start)
    sp = r.spans[k]
    return k, max(lo, sp.start) - sp.start, min(hi, sp.stop_end) - sp.start


def load_chat_rows():
    from kd_core.data_files.formats import classify_row

    return [classify_row(r, i + 1)[1] for i, r in enumerate(CHAT[:3])]


@pytest.fixture(scope="module")
def sp_student(tiny_pair):
    from conftest import build_sp_student

    return build_sp_student(tiny_pair.root / "given-sp")


def test_aligned_given_online_first_step_equals_offline(tiny_pair, sp_student, tmp_path):
    """Across tokenizers, a chat file online (teacher forward each step) and offline (the
    cache) give the same first step up to the cache's float16: the same positions, masks and
    spans; the later user turn is out of the loss in both."""
    dom = load_data_domain(str(write_jsonl(tmp_path / "chat.jsonl", CHAT)), DataSettings(), 0)
    first = {}
    for mode in ("offline", "online"):
        steps: list = []
        c = cfg(tmp_path / mode, num_iters=1, teacher_mode=mode)
        TrueKnowledgeDistiller(
            str(tiny_pair.teacher), str(sp_student), c, on_event=steps.append
        ).run({"chat": dom})
        first[mode] = next(e for e in steps if isinstance(e, Step))
    assert first["online"].ce == pytest.approx(first["offline"].ce, rel=1e-5)
    assert first["online"].kd == pytest.approx(first["offline"].kd, rel=2e-2)


def test_real_templates_across_tokenizers_meet_on_the_answers(tmp_path):
    """The golden conversation (system prompt, tools, two answers) read by a GPT-2 teacher in
    ChatML and a Llama-2 SentencePiece student in Llama-2's template (real tokenizers from
    ../shared/fixtures): the student trains exactly its answers' characters and their " </s>",
    and every KD span pairs the same characters of the same answer on both sides."""
    from test_data_files_render import CHATML, LLAMA2, chat_row, fixture_tokenizer

    t_tok = fixture_tokenizer("gpt-2", tmp_path, CHATML)
    s_tok = fixture_tokenizer("llama-spm", tmp_path, LLAMA2)
    given, _ = teacher_rows(
        t_tok, [chat_row()], train_on="all_assistant", chat_template_kwargs=None,
        max_seq_length=512, source="x",
    )  # fmt: skip
    student = student_rendering(s_tok, [g.row for g in given], "all_assistant", None, "x")
    al = plan_vocab_alignment(t_tok, s_tok, 50257, 32000, "align", "pieces")
    built = given_aligned_examples(given, student, sequences_only(given, 50257), al, True, 512, 4)
    (g,), (s,), (ex,) = given, student, built.examples
    assert g.rendered.text != s.text  # each model reads its own template
    off = s.offsets[ex.prompt_len :][ex.valid]
    covered = np.zeros(len(s.text), bool)
    for a, b in off:
        covered[a:b] = True
    want = np.zeros(len(s.text), bool)
    for sp in s.spans:  # "▁hi", "▁Time" hold the template's space: the student writes it
        want[sp.start - 1 : sp.stop_end] = True
    assert np.array_equal(covered, want)
    spans = ex.targets
    anchors = np.flatnonzero(spans.span_kind & SPAN_KIND)
    assert len(anchors) >= 8
    for j in anchors:
        t0, t1 = spans.teacher_span[j]
        s_chars = _turn_chars(s, ex.prompt_len + j, ex.prompt_len + j + spans.span_len[j])
        t_chars = _turn_chars(g.rendered, g.prompt_len + t0, g.prompt_len + t1)
        assert s_chars[0] == t_chars[0]
        # Inside an answer the two sides cover the same characters (an end of turn is
        # " </s>" for one and nothing trained for the other: CE only, no span).
        assert s_chars[1:] == t_chars[1:], (s_chars, t_chars)
