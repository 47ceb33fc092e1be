"""`kd eval`: how close is a student (base, or with an adapter) to the teacher?

On a domain's held-out prompts the teacher writes its responses (the same teacher pass and
cache as training), then at every response position we compare full distributions at T = 1:

    kl              mean over positions of KL(P_teacher || P_student)   (lower is better)
    top1_agreement  share of positions where both put the top token on the same id
    ce              mean -log P_student(teacher's token)                 (lower is better)

and, on the student's own text (what it will meet at inference: exposure bias):

    reverse_kl_on_student_samples   the student samples an answer to each held-out prompt
                    (seeded, T = 1), the teacher scores it: mean over its tokens of
                    KL(P_student || P_teacher) at T = 1                  (lower is better)

`compare_kd_vs_ce` trains, with the same steps and seed, a KD student (the configuration's
alpha and T) and a CE-only student (alpha 0), and reports the figures for base, kd and
ce_only; `compare_methods` does the same for any list of named methods (`METHODS`). The
command line around all this is in kd_core/cli.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.config import ConfigError, KDConfig
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, DomainError, domain_from_file
from kd_core.events import EvalResult, EventSink, PhaseStarted, null_sink
from kd_core.examples.aligned import build_aligned_examples, sampled_example
from kd_core.examples.batch import forward_inputs
from kd_core.examples.same_vocab import build_examples
from kd_core.files.user_dirs import default_cache_dir
from kd_core.generate import fitted_prompts, sample_batch
from kd_core.losses.aligned import ONE_TO_ONE, SPAN_KIND
from kd_core.losses.core import log_softmax
from kd_core.models.identity import identify_model
from kd_core.models.load import load_model, release, resolve_model, vocab_size
from kd_core.teacher.cache import TeacherOutputs, response_texts
from kd_core.teacher.teacher_pass import TeacherPass
from kd_core.train.on_policy import student_to_teacher
from kd_core.vocab.plan import VocabAlignment, eos_ids, plan_vocab_alignment

EVAL_CHUNK = 8


@dataclass
class TeacherReference:
    """The teacher's responses to the held-out prompts and its log-probs there (float16)."""

    prompts: list[str]
    outputs: TeacherOutputs
    log_probs: list[np.ndarray]  # per example [R, V_t]
    tokenizer: Any
    vocab: int
    teacher_path: Path  # loaded again to score the students' own answers


def response_logits(model: Any, seqs: list[np.ndarray], plens: list[int]) -> list[np.ndarray]:
    """Logits at the positions that predict each response token, per example (float32)."""
    out: list[np.ndarray] = []
    for start in range(0, len(seqs), EVAL_CHUNK):
        chunk = seqs[start : start + EVAL_CHUNK]
        logits = model(mx.array(forward_inputs(chunk))).astype(mx.float32)
        mx.eval(logits)
        arr = np.array(logits)
        for b, s in enumerate(chunk):
            p0 = plens[start + b] - 1
            out.append(arr[b, p0 : len(s) - 1])
    return out


def teacher_reference(
    teacher: str, prompts: list[str], cfg: KDConfig, domain: str, allow_download: bool = False
) -> TeacherReference:
    t_path = resolve_model(teacher, "teacher", allow_download)
    model, tok = load_model(t_path, "teacher")
    cache = default_cache_dir()
    tpass = TeacherPass(cache, identify_model(t_path, "teacher", cache), cfg)
    out = tpass.run(f"{domain}-heldout", prompts, False, lambda: (model, tok))
    logits = response_logits(model, out.sequences, out.prompt_lens)
    vocab = int(logits[0].shape[-1]) if logits else 0
    lps = [np.array(log_softmax(mx.array(lg))).astype(np.float16) for lg in logits]
    release(model)
    return TeacherReference(prompts, out, lps, tok, vocab, t_path)


def measure(
    ref: TeacherReference,
    student: str,
    adapter: str | Path | None,
    cfg: KDConfig,
    allow_download: bool = False,
) -> dict[str, float]:
    """KL, top-1 agreement and CE of a student (optionally + adapter) on the teacher's text."""
    s_path = resolve_model(student, "student", allow_download)
    model, s_tok = load_model(s_path, "student", adapter_path=adapter)
    model.eval()
    al = plan_vocab_alignment(
        ref.tokenizer, s_tok, ref.vocab, vocab_size(model), cfg.vocab_strategy, cfg.align_targets
    )
    if al.strategy == "align":
        examples = build_aligned_examples(
            ref.prompts, ref.outputs, ref.tokenizer, s_tok, al, online=True
        ).examples
    else:
        examples = build_examples(ref.prompts, ref.outputs, s_tok, al, online=True).examples
    seqs = [e.tokens for e in examples]
    logits = response_logits(model, seqs, [e.prompt_len for e in examples])
    compare = compare_aligned if al.strategy == "align" else compare_distributions
    figures: dict[str, float] = compare(ref, examples, logits, al)
    figures["bits_per_char"] = bits_per_char(ref, examples, logits)
    del logits
    own = sample_answers(model, s_tok, ref.prompts, cfg)
    own_lps = [log_softmax_np(x) for x in response_logits(model, *own)]
    release(model)
    figures["reverse_kl_on_student_samples"] = reverse_kl_on_samples(
        ref, own, own_lps, al, cfg, s_tok
    )
    return figures


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def sample_answers(
    model: Any, tokenizer: Any, prompts: list[str], cfg: KDConfig
) -> tuple[list[np.ndarray], list[int]]:
    """The model's own answer to each prompt (seeded by cfg.seed, T = 1, max_tokens):
    (prompt + answer sequences, prompt lengths)."""
    eos = eos_ids(tokenizer)
    prompt_ids = [ids for ids, _ in fitted_prompts(tokenizer, prompts, cfg)]
    budgets = [max(1, min(cfg.max_tokens, cfg.max_seq_length - len(p))) for p in prompt_ids]
    mx.random.seed(cfg.seed)
    answers = sample_batch(model, prompt_ids, budgets, eos, 1.0)
    seqs = [np.array(p + a, np.int32) for p, a in zip(prompt_ids, answers, strict=True)]
    return seqs, [len(p) for p in prompt_ids]


def reverse_kl_on_samples(
    ref: TeacherReference,
    own: tuple[list[np.ndarray], list[int]],
    student_lps: list[np.ndarray],
    al: VocabAlignment,
    cfg: KDConfig,
    student_tokenizer: Any = None,
) -> float:
    """Mean over the student's own answer tokens of KL(Q || P) at T = 1, the teacher reading
    the same text in its ids (tokens it cannot read are left out). Two tokenizers ("align"):
    the teacher reads the text in its own tokens, compared at the one-to-one span anchors
    over the shared tokens, as `compare_aligned` does."""
    t_prompts = [ids for ids, _ in fitted_prompts(ref.tokenizer, ref.prompts, cfg)]
    if al.strategy == "align":
        return _aligned_reverse_kl(ref, own, student_lps, al, t_prompts, student_tokenizer)
    s2t = student_to_teacher(al)
    t_seqs, valids = [], []
    for seq, plen, t_prompt in zip(*own, t_prompts, strict=True):
        resp = seq[plen:]
        t_resp = np.where(resp < len(s2t), s2t[np.minimum(resp, len(s2t) - 1)], -1)
        valids.append(t_resp >= 0)
        t_resp = np.where(t_resp >= 0, t_resp, 0)
        t_seqs.append(np.concatenate([np.array(t_prompt, np.int32), t_resp]).astype(np.int32))
    teacher, _ = load_model(ref.teacher_path, "teacher")
    t_logits = response_logits(teacher, t_seqs, [len(p) for p in t_prompts])
    release(teacher)
    total, n = 0.0, 0
    for q_full, t_lg, valid in zip(student_lps, t_logits, valids, strict=True):
        q = q_full.astype(np.float64)[:, al.student_ids]
        p = log_softmax_np(t_lg).astype(np.float64)[:, al.teacher_ids]
        if al.strategy != "truncate":  # over the shared tokens, renormalised
            q = q - np.log(np.exp(q).sum(-1, keepdims=True))
            p = p - np.log(np.exp(p).sum(-1, keepdims=True))
        kl = (np.exp(q) * (q - p)).sum(-1)
        total += float(kl[valid].sum())
        n += int(valid.sum())
    return total / max(n, 1)


def _aligned_reverse_kl(
    ref: TeacherReference,
    own: tuple[list[np.ndarray], list[int]],
    student_lps: list[np.ndarray],
    al: VocabAlignment,
    t_prompts: list[list[int]],
    student_tokenizer: Any,
) -> float:
    if student_tokenizer is None:
        raise ValueError("reverse_kl_on_samples: an aligned pair needs the student's tokenizer")
    exs = [
        sampled_example(
            seq[:plen],
            [int(t) for t in seq[plen:]],
            np.array(tp, np.int32),
            student_tokenizer,
            ref.tokenizer,
            1,
        )
        for seq, plen, tp in zip(*own, t_prompts, strict=True)
    ]
    teacher, _ = load_model(ref.teacher_path, "teacher")
    reads = [e.targets.teacher for e in exs]
    t_logits = response_logits(teacher, [r.tokens for r in reads], [r.prompt_len for r in reads])
    release(teacher)
    total, n = 0.0, 0
    for ex, q_full, t_lg in zip(exs, student_lps, t_logits, strict=True):
        spans = ex.targets
        anchors = np.flatnonzero((spans.span_kind[: len(q_full)] & SPAN_KIND) == ONE_TO_ONE)
        t_pos = spans.teacher_span[anchors, 0]
        keep = t_pos < len(t_lg)
        anchors, t_pos = anchors[keep], t_pos[keep]
        p, q, _ = _shared_log_probs(log_softmax_np(t_lg[t_pos]), q_full[anchors], al)
        total += float((np.exp(q) * (q - p)).sum())
        n += len(anchors)
    return total / max(n, 1)


def compare_distributions(
    ref: TeacherReference, examples: list[Any], student_logits: list[np.ndarray], al: VocabAlignment
) -> dict[str, float]:
    kl_sum = agree = ce_sum = 0.0
    n = 0
    t_ids, s_ids = al.teacher_ids, al.student_ids
    for ex, t_lp, s_lg in zip(examples, ref.log_probs, student_logits, strict=True):
        valid = ex.valid if ex.valid is not None else np.ones(len(s_lg), bool)
        t = t_lp.astype(np.float64)[:, t_ids]
        s_full = s_lg.astype(np.float64)
        s_full = s_full - s_full.max(-1, keepdims=True)
        s_full = s_full - np.log(np.exp(s_full).sum(-1, keepdims=True))
        s = s_full[:, s_ids]
        if al.strategy == "project":  # compare over the shared tokens, renormalised
            t = t - np.log(np.exp(t).sum(-1, keepdims=True))
            s = s - np.log(np.exp(s).sum(-1, keepdims=True))
        p = np.exp(t)
        kl = (p * (t - s)).sum(-1)
        top_t, top_s = t.argmax(-1), s.argmax(-1)
        targets = ex.tokens[ex.prompt_len :]
        ce = -s_full[np.arange(len(targets)), targets]
        kl_sum += float(kl[valid].sum())
        agree += float((top_t == top_s)[valid].sum())
        ce_sum += float(ce[valid].sum())
        n += int(valid.sum())
    n = max(n, 1)
    return {"kl": kl_sum / n, "top1_agreement": agree / n, "ce": ce_sum / n, "positions": n}


def _shared_log_probs(t_lp: np.ndarray, s_lg: np.ndarray, al: VocabAlignment):
    """(teacher, student) log-probs over the shared tokens, each renormalised there, and the
    student's full log-probs."""
    s_full = log_softmax_np(s_lg).astype(np.float64)
    t = t_lp.astype(np.float64)[..., al.teacher_ids]
    s = s_full[..., al.student_ids]
    t = t - np.log(np.exp(t).sum(-1, keepdims=True))
    s = s - np.log(np.exp(s).sum(-1, keepdims=True))
    return t, s, s_full


def compare_aligned(
    ref: TeacherReference, examples: list[Any], student_logits: list[np.ndarray], al: VocabAlignment
) -> dict[str, float]:
    """Two tokenizers: kl and top-1 agreement at the one-to-one span anchors (teacher
    position t0 against student position s0, over the shared tokens, T = 1); ce over every
    student response token (its own tokens of the teacher's text)."""
    kl_sum = agree = ce_sum = 0.0
    n = n_ce = 0
    for ex, t_lp, s_lg in zip(examples, ref.log_probs, student_logits, strict=True):
        spans = ex.targets
        anchors = np.flatnonzero((spans.span_kind[: len(s_lg)] & SPAN_KIND) == ONE_TO_ONE)
        t_pos = spans.teacher_span[anchors, 0]
        keep = t_pos < len(t_lp)
        anchors, t_pos = anchors[keep], t_pos[keep]
        t, s, s_full = _shared_log_probs(t_lp[t_pos], s_lg[anchors], al)
        kl_sum += float((np.exp(t) * (t - s)).sum())
        agree += float((t.argmax(-1) == s.argmax(-1)).sum())
        n += len(anchors)
        full = log_softmax_np(s_lg).astype(np.float64)
        targets = ex.tokens[ex.prompt_len :][: len(s_lg)]
        valid = np.ones(len(targets), bool) if ex.valid is None else ex.valid[: len(targets)]
        ce_sum -= float(full[np.arange(len(targets)), targets][valid].sum())  # given: answers
        n_ce += int(valid.sum())
    return {
        "kl": kl_sum / max(n, 1),
        "top1_agreement": agree / max(n, 1),
        "ce": ce_sum / max(n_ce, 1),
        "positions": n,
    }


def bits_per_char(
    ref: TeacherReference, examples: list[Any], student_logits: list[np.ndarray]
) -> float:
    """The student's negative log-likelihood of the teacher's held-out response text (its own
    tokens of it, an ending EOS left out), in bits, per character: comparable across
    tokenizers."""
    texts, _ = response_texts(ref.tokenizer, ref.outputs.sequences, ref.outputs.prompt_lens)
    eos = set(eos_ids(ref.tokenizer))
    nats = 0.0
    chars = 0
    for ex, s_lg, seq, plen, text in zip(
        examples, student_logits, ref.outputs.sequences, ref.outputs.prompt_lens, texts,
        strict=False,
    ):  # fmt: skip
        targets = ex.tokens[ex.prompt_len :][: len(s_lg)]
        n = len(targets) - int(len(seq) > plen and int(seq[-1]) in eos)
        full = log_softmax_np(s_lg[:n]).astype(np.float64)
        nats -= float(full[np.arange(n), targets[:n]].sum())
        chars += len(text)
    return nats / np.log(2.0) / max(chars, 1)


def heldout_prompts(domain: str, domain_files: list[str] | None = None) -> list[str]:
    if domain in BUILTIN_DOMAINS:
        return DOMAIN_PROMPTS[domain]["heldout"]
    for f in domain_files or []:
        name, prompts = domain_from_file(f)
        if name == domain:
            return prompts  # a custom domain's file is its evaluation set
    raise DomainError(f"domain: unknown domain {domain!r} for eval")


def _train_and_measure(
    teacher: str | None,
    student: str | None,
    domain: str,
    cfg: KDConfig,
    runs: dict[str, KDConfig],
    allow_download: bool,
    sink: EventSink,
) -> dict[str, Any]:
    """Train each run (same steps and seed) on the domain's training prompts, then measure
    it and the base student on the held-out prompts: {"base": ..., name: ...}."""
    prompts = DOMAIN_PROMPTS[domain]["examples"] if domain in BUILTIN_DOMAINS else None
    if prompts is None:
        raise DomainError(f"domain: --compare needs a built-in domain, not {domain!r}")
    for run_cfg in runs.values():
        TrueKnowledgeDistiller(
            teacher, student, run_cfg, on_event=sink, allow_download=allow_download
        ).distill_domain(domain, prompts)
    held_out = heldout_prompts(domain)
    sink(PhaseStarted("eval", domain, len(runs) + 1, "held-out prompts"))
    ref = teacher_reference(teacher or "demo-teacher", held_out, cfg, domain, allow_download)
    s = student or "demo-student"
    result: dict[str, Any] = {"base": measure(ref, s, None, cfg, allow_download)}
    for name, run_cfg in runs.items():
        result[name] = measure(ref, s, Path(run_cfg.output) / domain, cfg, allow_download)
    for name in ("base", *runs):
        sink(EvalResult(domain, cfg.num_iters, result[name], student=name))
    return result


def kd_and_ce_runs(cfg: KDConfig, output: Path) -> dict[str, KDConfig]:
    """--compare's two students: KD (cfg's alpha and T) and CE-only (alpha 0, no on-policy
    steps), same steps and seed, each in its own folder under `output`."""
    if cfg.alpha == 0.0:
        raise ConfigError("alpha: --compare needs alpha above 0 for its KD student (it is 0)")
    return {
        "kd": cfg.replace(output=str(output / "kd")),
        "ce_only": cfg.replace(alpha=0.0, on_policy_ratio=0.0, output=str(output / "ce_only")),
    }


def kd_vs_ce_summary(result: dict[str, Any], cfg: KDConfig) -> dict[str, Any]:
    """How much closer KD came than CE-only, from the three students' held-out KL."""
    base, kd, ce = result["base"]["kl"], result["kd"]["kl"], result["ce_only"]["kl"]
    return {
        "iters": cfg.num_iters,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "kd_vs_ce_kl_reduction": (ce - kd) / ce if ce > 0 else 0.0,
        "kd_gap_closed": (base - kd) / base if base > 0 else 0.0,
        "ce_gap_closed": (base - ce) / base if base > 0 else 0.0,
    }


def compare_kd_vs_ce(
    teacher: str | None,
    student: str | None,
    domain: str,
    cfg: KDConfig,
    output: Path,
    allow_download: bool = False,
    sink: EventSink = null_sink,
) -> dict[str, Any]:
    """Train a KD student (cfg's alpha and T) and a CE-only student (alpha 0) with the same
    steps and seed; measure both and the base student on the held-out prompts."""
    runs = kd_and_ce_runs(cfg, output)
    result = _train_and_measure(teacher, student, domain, cfg, runs, allow_download, sink)
    result["summary"] = {"domain": domain, **kd_vs_ce_summary(result, cfg)}
    return result


# --methods: a name is ce_only, kd (the configuration as given), or a divergence's short
# name with an optional prefix saying where the KD term's text comes from.
METHOD_DIVERGENCES = {
    "fkl": "forward_kl",
    "rkl": "reverse_kl",
    "jsd": "jsd",
    "skew_kl": "skew_kl",
    "tvd": "tvd",
}
METHOD_PREFIXES = ("offline_", "online_", "on_policy_")
ALLOWED_METHODS = (
    f"ce_only, kd, or one of {', '.join(METHOD_DIVERGENCES)} with an optional prefix "
    f"{', '.join(METHOD_PREFIXES)} (e.g. offline_fkl, on_policy_rkl)"
)


def parse_methods(text: str) -> list[str]:
    """`--methods`' comma-separated names; an empty list is an error, not the default
    comparison (`--methods ''` asked for methods and named none)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"methods: name at least one method, comma-separated: {ALLOWED_METHODS}")
    return methods


# on_policy_X's share of on-policy steps when the configuration has none (GKD's lambda): on
# the demo pair, reverse KL on every step (lambda 1) never lowered the held-out KL and its
# samples drifted (512 tokens, then short); half the steps on-policy, half forward KL on the
# teacher's text, gave both figures (README: "Choosing a divergence, and on-policy training").
ON_POLICY_METHOD_RATIO = 0.5


def method_config(name: str, cfg: KDConfig) -> KDConfig:
    """The configuration of a named method, from the run's: offline_X / online_X train on
    the teacher's text with that teacher mode; on_policy_X minimises X on the student's own
    samples on on_policy_ratio of the steps (ON_POLICY_METHOD_RATIO when the configuration
    has 0), the other steps being the configuration's off-policy KD (its divergence and
    teacher mode); a bare X keeps the configuration's teacher mode, off-policy."""
    if name == "ce_only":
        return cfg.replace(
            alpha=0.0, on_policy_ratio=0.0, divergence="forward_kl", on_policy_divergence="same"
        )
    if name == "kd":
        return cfg
    prefix = next((p for p in METHOD_PREFIXES if name.startswith(p)), "")
    divergence = METHOD_DIVERGENCES.get(name[len(prefix) :])
    if divergence is None:
        raise ConfigError(f"methods: unknown method {name!r}; use {ALLOWED_METHODS}")
    if cfg.alpha == 0.0:
        raise ConfigError(f"alpha: method {name!r} needs alpha above 0 (it is 0)")
    changes: dict[str, Any] = {"divergence": divergence, "on_policy_ratio": 0.0}
    if prefix in ("offline_", "online_"):
        changes["teacher_mode"] = prefix.rstrip("_")
    elif prefix == "on_policy_":
        changes = {
            "on_policy_divergence": divergence,
            "on_policy_ratio": cfg.on_policy_ratio or ON_POLICY_METHOD_RATIO,
        }
    return cfg.replace(**changes)


def compare_methods(
    teacher: str | None,
    student: str | None,
    domain: str,
    cfg: KDConfig,
    output: Path,
    methods: list[str],
    allow_download: bool = False,
    sink: EventSink = null_sink,
) -> dict[str, Any]:
    """Train each named method with the same steps and seed and measure every figure for
    each and for the base student: {"base": ..., method: ..., "summary": ...}."""
    if not methods:
        raise ConfigError(f"methods: name at least one method: {ALLOWED_METHODS}")
    if len(set(methods)) != len(methods) or "base" in methods:
        raise ConfigError(f"methods: name each method once (not 'base'), got {methods!r}")
    runs = {m: method_config(m, cfg).replace(output=str(output / m)) for m in methods}
    result = _train_and_measure(teacher, student, domain, cfg, runs, allow_download, sink)
    keys = ("alpha", "divergence", "jsd_beta", "skew", "teacher_mode", "on_policy_ratio")
    keys += ("on_policy_divergence",)
    result["summary"] = {
        "domain": domain,
        "iters": cfg.num_iters,
        "seed": cfg.seed,
        "temperature": cfg.temperature,
        "methods": {m: {k: getattr(c, k) for k in keys} for m, c in runs.items()},
    }
    return result


__all__ = [
    "measure",
    "teacher_reference",
    "compare_kd_vs_ce",
    "compare_methods",
    "parse_methods",
    "heldout_prompts",
]
