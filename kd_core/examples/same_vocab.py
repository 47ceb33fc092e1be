"""Teacher sequences -> the student's training examples (training and `kd eval` share this).

The student reads its own formatting of the prompt, then the teacher's response mapped token
by token into its vocabulary, so response positions line up one to one with the teacher's
(vocab_strategy truncate / project). A response token the student vocabulary lacks is masked
out (neither CE nor KD) and fed as EOS.

Long prompts: the teacher pass keeps at most `prompt_budget(cfg)` tokens of a prompt, cut from
the front so that the chat template's assistant marker (at its end) stays; the student's
prompt is cut the same way when prompt + response would pass max_seq_length. An example with
no response position left is skipped. Both are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kd_core.examples.batch import Example, SoftTargets, Targets, TeacherTokens, valid_tokens
from kd_core.generate import student_prompt
from kd_core.teacher.cache import TeacherOutputs
from kd_core.vocab.plan import VocabAlignment, eos_ids


@dataclass
class ExampleSet:
    examples: list[Example] = field(default_factory=list)
    unmapped: int = 0  # response tokens with no student token (masked)
    cut: int = 0  # prompts cut from the front to fit max_seq_length
    skipped: int = 0  # examples with no trainable position left
    vocab_alignment: dict[str, Any] | None = None  # align: kd_summary.json's coverage block


def build_examples(
    prompts: list[str],
    outputs: TeacherOutputs,
    student_tokenizer: Any,
    alignment: VocabAlignment,
    online: bool,
    max_seq_length: int | None = None,
) -> ExampleSet:
    t2s = alignment.teacher_to_student
    eos = eos_ids(student_tokenizer)[0]
    out = ExampleSet()
    for i, prompt in enumerate(prompts):
        was_cut = bool(outputs.prompt_cut[i]) if outputs.prompt_cut else False
        seq, plen = outputs.sequences[i], outputs.prompt_lens[i]
        resp_t = seq[plen:]
        if len(resp_t) == 0:
            out.skipped += 1
            continue
        mapped = np.where(resp_t < len(t2s), t2s[np.minimum(resp_t, len(t2s) - 1)], -1)
        valid = mapped >= 0
        out.unmapped += int((~valid).sum())
        mapped = np.where(valid, mapped, eos).astype(np.int32)
        s_prompt, cut = student_prompt(student_tokenizer, prompt, len(mapped), max_seq_length)
        out.cut += was_cut or cut
        targets: Targets
        if online:
            targets = TeacherTokens(seq, plen)
        else:
            targets = student_soft_targets(outputs.topk_ids[i], outputs.topk_logprobs[i], t2s)
        ex = Example(np.concatenate([s_prompt, mapped]), len(s_prompt), seq[:plen], targets, valid)
        if max_seq_length is not None and valid_tokens(ex, max_seq_length) == 0:
            out.skipped += 1
            continue
        out.examples.append(ex)
    return out


def student_soft_targets(ids_t: np.ndarray, lps: np.ndarray, t2s: np.ndarray) -> SoftTargets:
    """The teacher's top-k in student ids; a token the student lacks is a padding slot."""
    ids_s = t2s[np.minimum(ids_t, len(t2s) - 1)]
    keep = (ids_s >= 0) & (ids_t < len(t2s))
    return SoftTargets(
        np.where(keep, ids_s, 0).astype(np.int32),
        np.where(keep, lps, -np.inf).astype(np.float32),
    )
