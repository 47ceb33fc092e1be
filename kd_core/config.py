"""KDConfig: every hyper-parameter of a run, validated once; RunSpec: what a run distils.

`kd.toml` holds KDConfig's fields by name at the top level plus the run's keys (RUN_KEYS:
teacher, student, domains, domain_files, data, and the two chat-template tables). CLI flags use
the same names in kebab-case.
Every error is one line that names the field and what is allowed (ConfigError). kd.toml as a
file (read, edited in place, written whole) is kd_core/config_file.py.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from kd_core.teacher_address import TOKEN_IN_FILE, address_error


class ConfigError(ValueError):
    """A bad configuration value. The message is one line naming the field."""


# The modes, as types: each is checked in one place (`_check_value`, from these choices).
TeacherMode = Literal["offline", "online"]
TeacherApi = Literal["kd", "vllm", "sglang", "mlx_lm"]
VocabStrategy = Literal["auto", "truncate", "project", "align"]
AlignTargets = Literal["pieces", "shared"]
LrSchedule = Literal["constant", "cosine"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"]
TeacherAnswers = Literal["auto", "given", "generate", "both"]
TrainOn = Literal["all_assistant", "last"]


def _spec(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: tuple[str, ...] | None = None,
    group: str = "training",
) -> Any:
    meta = {
        "help": help,
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "hi_open": hi_open,
        "choices": choices,
        "group": group,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class KDConfig:
    """Hyper-parameters of a distillation run (the seed's fields plus what a real run needs)."""

    # Knowledge distillation
    temperature: float = _spec(
        2.0,
        "Loss temperature T: softens both distributions before the KL. 1 = none, "
        "2 = recommended, 5 = very soft (more dark knowledge, noisier), >10 degrades.",
        lo=0.5,
        hi=10.0,
        group="kd",
    )
    alpha: float = _spec(
        0.7,
        "Weight of the KD term: L = alpha*KD + (1-alpha)*CE. 1 = pure KD, 0.7 = "
        "recommended, 0 = plain fine-tuning on the teacher's text.",
        lo=0.0,
        hi=1.0,
        group="kd",
    )
    teacher_temperature: float = _spec(
        0.7,
        "Sampling temperature of the teacher when it writes responses (0 = greedy). "
        "Independent of the loss temperature.",
        lo=0.0,
        hi=5.0,
        group="teacher",
    )
    max_tokens: int = _spec(
        128, "Longest teacher response, in tokens.", lo=1, hi=32768, group="teacher"
    )
    top_k: int = _spec(
        32,
        "Teacher log-probabilities kept per position in the offline cache (the rest is "
        "kept as one tail mass).",
        lo=1,
        hi=1024,
        group="teacher",
    )
    teacher_mode: TeacherMode = _spec(
        "offline",
        "offline: teacher pass first, cached top-k targets, teacher released "
        "before training. online: teacher forward every step (full distribution).",
        choices=get_args(TeacherMode),
        group="teacher",
    )
    teacher_api: TeacherApi = _spec(
        "kd",
        'What serves a teacher at an address (teacher = "http://host:port"): kd (kd '
        "serve-teacher), mlx_lm (mlx_lm.server: offline pass only, top_k <= 11, T = 1), vllm "
        "or sglang (given-text scoring at T = 1). Token: --teacher-token or KD_TEACHER_TOKEN.",
        choices=get_args(TeacherApi),
        group="teacher",
    )
    vocab_strategy: VocabStrategy = _spec(
        "auto",
        "How teacher and student vocabularies are matched: auto picks from the "
        "tokenizers (truncate for one tokenizer, align for two); truncate needs identical "
        "token strings over the shared ids; project maps ids through token strings; align "
        "has the student read the teacher's text in its own tokens, aligned by characters "
        "(cross-tokenizer pairs: Qwen teacher, Llama student).",
        choices=get_args(VocabStrategy),
        group="kd",
    )
    align_targets: AlignTargets = _spec(
        "pieces",
        "What an aligned pair (vocab_strategy align) compares: pieces reads the teacher's "
        "next-token distribution in the student's own pieces at every position of a span "
        "with one teacher token (the student's answers stay readable); shared compares only "
        "the tokens both vocabularies spell alike, plus sorted-probability (ULD) and "
        "whole-span terms, as TRL's GOLD does.",
        choices=get_args(AlignTargets),
        group="kd",
    )

    # Divergence and on-policy distillation (kd_core/losses/divergences.py,
    # kd_core/train/on_policy.py)
    divergence: Divergence = _spec(
        "forward_kl",
        "What the KD term measures between the teacher P and the student Q at temperature T "
        "(scaled by T^2): forward_kl (mass-covering, the classic KD; fastest), reverse_kl "
        "(mode-seeking: the usual choice for on-policy training), jsd (generalized "
        "Jensen-Shannon, jsd_beta), skew_kl (KL to a P/Q mixture, skew; stable), tvd "
        "(total variation, bounded).",
        choices=get_args(Divergence),
        group="divergence",
    )
    jsd_beta: float = _spec(
        0.5,
        "jsd only: beta in beta*KL(P||M) + (1-beta)*KL(Q||M), M = beta*P + (1-beta)*Q. "
        "Near 0 acts like forward KL, near 1 like reverse KL.",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        group="divergence",
    )
    skew: float = _spec(
        0.1,
        "skew_kl only: s in KL(P || s*P + (1-s)*Q) (DistiLLM); larger is smoother.",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        group="divergence",
    )
    on_policy_ratio: float = _spec(
        0.0,
        "Share of optimiser steps trained on the student's own samples, scored by the "
        "teacher (0 = off, today's KD; 1 = every step). Cures exposure bias; pair it with "
        "divergence = reverse_kl. Keeps the teacher in memory beside the student.",
        lo=0.0,
        hi=1.0,
        group="divergence",
    )
    student_temperature: float = _spec(
        1.0,
        "Sampling temperature of the student on on-policy steps (1 = its own distribution, "
        "0 = greedy).",
        lo=0.0,
        hi=5.0,
        group="divergence",
    )
    on_policy_divergence: str = _spec(
        "same",
        "What the on-policy steps minimise on the student's samples: same (= divergence) or "
        "a divergence of its own, e.g. reverse_kl on them with forward_kl on the teacher's "
        "text for the other steps (README: on-policy training).",
        choices=("same", *get_args(Divergence)),
        group="divergence",
    )

    # LoRA
    lora_rank: int = _spec(
        16,
        "LoRA rank: 8 minimal, 16 recommended, 32 high capacity, 64 diminishing returns.",
        lo=1,
        hi=1024,
        group="lora",
    )
    lora_scale: float = _spec(
        1.0,
        "Multiplier of the LoRA update (mlx-lm's 'scale'); larger acts like a larger "
        "learning rate for the adapter.",
        lo=0.0,
        hi=1000.0,
        lo_open=True,
        group="lora",
    )
    lora_dropout: float = _spec(
        0.0, "Dropout on the LoRA input.", lo=0.0, hi=1.0, hi_open=True, group="lora"
    )
    lora_layers: int = _spec(
        16,
        "Number of transformer blocks (from the top) that get LoRA; -1 = all (0 is refused: "
        "mlx-lm would read it as all).",
        lo=-1,
        hi=100000,
        group="lora",
    )

    # Training
    learning_rate: float = _spec(1e-4, "Adam learning rate.", lo=0.0, hi=1.0, lo_open=True)
    lr_schedule: LrSchedule = _spec(
        "constant", "Learning-rate schedule after warm-up.", choices=get_args(LrSchedule)
    )
    warmup_steps: int = _spec(0, "Linear warm-up steps.", lo=0, hi=10**7)
    batch_size: int = _spec(4, "Sequences per optimiser step.", lo=1, hi=4096)
    grad_accumulation: int = _spec(
        1,
        "Micro-batches per optimiser step (loss normalised over "
        "the valid tokens of the whole step).",
        lo=1,
        hi=1024,
    )
    num_iters: int = _spec(200, "Optimiser steps per domain.", lo=1, hi=10**7)
    max_seq_length: int = _spec(
        512, "Longest prompt + response; longer ones are cut.", lo=8, hi=1 << 20
    )
    loss_chunk: int = _spec(
        0,
        "Positions per chunk of the offline loss, so the full [batch, seq, vocab] logits "
        "never exist at once (big vocabularies). 0 = auto (chunk when one such float32 tensor "
        "would pass 256 MB), -1 = never.",
        lo=-1,
        hi=1 << 20,
    )
    cpu_streams: int = _spec(
        0,
        "Parallel MLX streams per step, the batch's rows split among them (MLX runs each "
        "element-wise op on one CPU thread; this uses every core). 0 = auto (one per core on "
        "the CPU, 1 on a GPU), 1 = off.",
        lo=0,
        hi=256,
    )
    seed: int = _spec(
        0, "Random seed (teacher sampling, data order, LoRA init).", lo=0, hi=2**32 - 1
    )

    # A data file (`data` in kd.toml, `--data`; kd_core/data_files)
    teacher_answers: TeacherAnswers = _spec(
        "auto",
        "Data files: given = the teacher scores the file's own answers (no sampling); generate "
        "= it writes its own; both = the union; auto = given if the file has answers.",
        choices=get_args(TeacherAnswers),
        group="data",
    )
    train_on: TrainOn = _spec(
        "all_assistant",
        "Data files: chat turns trained: all_assistant or last; only assistant tokens.",
        choices=get_args(TrainOn),
        group="data",
    )
    prompt_key: str = _spec("prompt", "Data files: a row's prompt key.", group="data")
    completion_key: str = _spec("completion", "Data files: its answer key.", group="data")

    # Reporting and outputs
    steps_per_report: int = _spec(
        10, "Steps between printed reports.", lo=1, hi=10**7, group="output"
    )
    steps_per_save: int = _spec(100, "Steps between checkpoints.", lo=1, hi=10**7, group="output")
    output: str = _spec(
        "adapters_kd", "Output folder: <output>/<domain>/adapters.safetensors.", group="output"
    )

    def __post_init__(self) -> None:
        # The one check: a KDConfig that exists is valid, and frozen, so it stays valid.
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name))

    def replace(self, **changes: Any) -> KDConfig:
        """A copy with `changes`, checked like any new KDConfig."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> KDConfig:
        """The settings a run recorded (RunStarted, kd_summary.json), read back by a newer
        kd: fields it no longer has are dropped, fields it did not have yet or that a newer
        rule refuses take their defaults. Settings a user writes go through kd.toml instead,
        where every such case is an error."""
        known = {k: v for k, v in data.items() if k in CONFIG_FIELDS}
        while True:
            try:
                return cls(**known)
            except (ConfigError, TypeError) as e:
                name = str(e).split(":", 1)[0]
                if name not in known:
                    return cls()
                del known[name]


CONFIG_FIELDS: dict[str, Any] = {f.name: f for f in fields(KDConfig)}
RUN_KEYS = ("teacher", "student", "domains", "domain_files", "teacher_tokenizer", "data")
RUN_KEYS += ("teacher_chat_template_kwargs", "student_chat_template_kwargs")
"""Keys of kd.toml that are not KDConfig fields: what to distil."""


def field_help(name: str) -> str:
    return CONFIG_FIELDS[name].metadata["help"]


def allowed_text(name: str) -> str:
    """Human words for what a field accepts, e.g. 'a number from 0.5 to 10'."""
    f = CONFIG_FIELDS[name]
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(repr(c) for c in m["choices"])
    kind = {"int": "a whole number", "float": "a number", "str": "text"}[_type_name(f)]
    lo, hi = m["lo"], m["hi"]
    if lo is None:
        return kind
    left = "above" if m["lo_open"] else "from"
    right = "below" if m["hi_open"] else "to"
    return f"{kind} {left} {_fmt(lo)} {right} {_fmt(hi)}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _type_name(f: Any) -> str:
    if f.metadata.get("choices"):
        return "str"  # a Literal mode
    return f.type if isinstance(f.type, str) else f.type.__name__


def _check_value(name: str, value: Any) -> None:
    f = CONFIG_FIELDS[name]
    m = f.metadata
    t = _type_name(f)
    allowed = allowed_text(name)
    if t == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected {allowed}, got {value!r}")
        if m["choices"] and value not in m["choices"]:
            raise ConfigError(f"{name}: {value!r} is not allowed; use {allowed}")
        if not m["choices"] and not value.strip():
            raise ConfigError(f"{name}: must not be empty")
        return
    # bool is an int subclass in Python; `alpha = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: expected {allowed}, got {value!r}")
    if t == "int" and not isinstance(value, int):
        raise ConfigError(f"{name}: expected {allowed}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: expected {allowed}, got {value!r}")
    lo, hi = m["lo"], m["hi"]
    bad_lo = lo is not None and (value <= lo if m["lo_open"] else value < lo)
    bad_hi = hi is not None and (value >= hi if m["hi_open"] else value > hi)
    if bad_lo or bad_hi:
        raise ConfigError(f"{name}: {value!r} is out of range; allowed {allowed}")
    if name == "lora_layers" and value == 0:
        raise ConfigError("lora_layers: 0 is not allowed; use -1 for all blocks, or 1 and up")


def coerce_value(name: str, text: str) -> Any:
    """Parse a CLI/TUI string for field `name` and validate it (ConfigError if bad)."""
    if name not in CONFIG_FIELDS:
        raise ConfigError(unknown_key_message(name))
    t = _type_name(CONFIG_FIELDS[name])
    raw = text.strip()
    try:
        value: Any = int(raw) if t == "int" else float(raw) if t == "float" else raw
    except ValueError:
        raise ConfigError(f"{name}: expected {allowed_text(name)}, got {text!r}") from None
    _check_value(name, value)
    return value


def unknown_key_message(key: str) -> str:
    known = list(CONFIG_FIELDS) + list(RUN_KEYS)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `kd distill --help` for the keys"
    return f"{key}: unknown setting{hint}"


@dataclass
class RunSpec:
    """What to distil: the pair, the domains, and the hyper-parameters."""

    teacher: str | None = None
    student: str | None = None
    domains: list[str] = field(default_factory=list)
    domain_files: list[str] = field(default_factory=list)
    config: KDConfig = field(default_factory=KDConfig)
    data: str | None = None  # a data PATH or hf:NAME[:split]: one more domain (issue 25)
    # kd.toml's tables of arguments to each model's chat template (enable_thinking = false)
    teacher_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    student_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher_tokenizer: str | None = None  # a remote teacher's, when its server sends none


def spec_from_mapping(
    data: dict[str, Any], base: RunSpec | None = None, where: str = "kd.toml"
) -> RunSpec:
    """Build a RunSpec from a parsed kd.toml mapping, over `base` (defaults if None)."""
    base = base or RunSpec()
    changes: dict[str, Any] = {}
    spec = replace(base, domains=list(base.domains), domain_files=list(base.domain_files))
    for key, value in data.items():
        if key in CONFIG_FIELDS:
            changes[key] = value
        elif key in RUN_KEYS[-3:]:
            setattr(spec, key, _run_value(key, value))
        elif key in ("teacher", "student", "teacher_tokenizer"):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{key}: expected a model folder or hub id (text), got {value!r}")
            if key == "teacher" and (bad := address_error(value)):
                raise ConfigError(bad)  # a server's address that names no host
            setattr(spec, key, value)
        elif key == "teacher_token":
            raise ConfigError(TOKEN_IN_FILE)
        elif key in ("domains", "domain_files"):
            if not isinstance(value, list) or not all(
                isinstance(v, str) and v.strip() for v in value
            ):
                raise ConfigError(
                    f"{key}: expected a list of names, e.g. "
                    f'{key} = ["thinking", "task"], got {value!r}'
                )
            setattr(spec, key, list(value))
        else:
            raise ConfigError(unknown_key_message(key))
    spec.config = replace(base.config, **changes)  # checked there, once
    return spec


def _run_value(key: str, value: Any) -> Any:
    """`data` (text) or a chat-template table (a TOML table), checked."""
    if key == "data" and isinstance(value, str) and value.strip():
        return value
    if key != "data" and isinstance(value, dict):
        return dict(value)
    want = "a data folder, .jsonl file or hf:NAME" if key == "data" else f"a table: [{key}]"
    raise ConfigError(f"{key}: expected {want}, got {value!r}")
