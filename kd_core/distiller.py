"""TrueKnowledgeDistiller: the seed's Python API over the teacher pass and the student pass.

    distiller = TrueKnowledgeDistiller("path/or/hub-id", "path/or/hub-id", KDConfig(...))
    result = distiller.distill_domain("thinking", DOMAIN_PROMPTS["thinking"]["examples"])
    results = distiller.distill_all()

With no models named, the built-in demo pair is used. Progress goes to `on_event` as the
typed events of kd_core.events. A run is three stages: the teacher pass for every domain,
the teacher's release (offline mode: it never sits beside the student being trained), and
the training of each domain's adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from kd_core import demo
from kd_core.config import ConfigError, KDConfig
from kd_core.data_files.domain import DataDomain
from kd_core.data_run import (
    MIN_ALIGN_COVERAGE,
    DataPassArgs,
    DataTargets,
    checked_data_examples,
    data_teacher_pass,
)
from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, check_domain_name
from kd_core.errors import NoExamplesError, one_line
from kd_core.events import (
    CacheUsed,
    DomainFinished,
    DomainResult,
    EventSink,
    Log,
    PhaseStarted,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    null_sink,
)
from kd_core.examples.aligned import build_aligned_examples, describe_alignment
from kd_core.examples.same_vocab import ExampleSet, build_examples
from kd_core.files.user_dirs import default_cache_dir
from kd_core.generate import GenerationStopped
from kd_core.models.identity import ModelIdentity, identify_model, pair_fields
from kd_core.models.load import (
    ModelError,
    load_model,
    model_info,
    release,
    resolve_model,
    vocab_size,
)
from kd_core.models.memory import estimate_memory
from kd_core.remote.connect import ConnectedTeacher, remote_model_info
from kd_core.run.control import RunControl
from kd_core.run.outputs import (
    SUMMARY_FILE,
    OutputError,
    adapter_config,
    check_output_dir,
    domain_dir,
    write_summary,
)
from kd_core.run_teacher import RunTeacher, connect_run_teacher
from kd_core.runtime.distributed import world as get_world
from kd_core.teacher.cache import TeacherOutputs, sweep_stale_cache
from kd_core.teacher.given import GivenPass
from kd_core.teacher.teacher_pass import TeacherPass
from kd_core.teacher_address import is_remote
from kd_core.train.checkpoints import CheckpointStore, run_fingerprint
from kd_core.train.on_policy import StudentSampler
from kd_core.train.trainer import StudentTrainer, apply_lora
from kd_core.vocab.plan import VocabAlignment, eos_ids, plan_vocab_alignment
from kd_core.vocab.spans import AlignmentError

# A domain is a list of prompts (the teacher answers them) or a data file (issue 25).
Domain = list[str] | DataDomain


# Measured on the demo pair (README, "Cross-tokenizer distillation, measured"): with
# align_targets = "shared" on-policy steps lower held-out KL but garble the student's own
# answers ("pieces", the default, does not).
ALIGNED_ON_POLICY_WARNING = (
    "on_policy_ratio: on-policy steps with align_targets = 'shared' bring the student closer "
    "to the teacher on the teacher's text but, measured on the demo pair, garble its own "
    "answers (README: Cross-tokenizer distillation, measured); align_targets = 'pieces' "
    "keeps them readable"
)


@dataclass
class _Run:
    """What the stages of one run share. Built by keyword; the two identities are required:
    the teacher cache and every checkpoint are keyed by them (kd_core/models/identity.py)."""

    domains: dict[str, Domain]
    resume: bool
    output: Path
    teacher: RunTeacher
    student_path: Path
    started: float
    teacher_id: ModelIdentity
    student_id: ModelIdentity
    outputs: dict[str, TeacherOutputs] = field(default_factory=dict)
    results: list[DomainResult] = field(default_factory=list)
    alignment: VocabAlignment | None = None
    data: dict[str, DataTargets] = field(default_factory=dict)  # the data domains' teacher side


class TrueKnowledgeDistiller:
    """Distil a teacher into LoRA adapters of a student, one adapter per domain."""

    def __init__(
        self,
        teacher_model_id: str | None = None,
        student_model_id: str | None = None,
        config: KDConfig | None = None,
        *,
        on_event: EventSink | None = None,
        control: RunControl | None = None,
        allow_download: bool = False,
        cache_dir: str | Path | None = None,
        teacher_token: str | None = None,
        teacher_tokenizer: str | Path | None = None,
    ) -> None:
        self.config = config or KDConfig()
        self.teacher_model_id = teacher_model_id or "demo-teacher"
        self.student_model_id = student_model_id or "demo-student"
        self.world = get_world()
        # One writer, one reporter: only rank 0 of a distributed run emits events.
        self.sink: EventSink = (on_event or null_sink) if self.world.is_main else null_sink
        self.control = control or RunControl()
        self.allow_download = allow_download
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # A teacher named by its address (kd_core/remote/connect.py): the token is the
        # argument, else $KD_TEACHER_TOKEN; teacher_tokenizer names the served model's
        # tokenizer for servers that do not send theirs (mlx_lm, vLLM, SGLang).
        self.remote = is_remote(self.teacher_model_id)
        self.teacher_token = teacher_token
        self.teacher_tokenizer = teacher_tokenizer

    # ---- the seed's API -------------------------------------------------------------------
    def distill_domain(
        self, domain: str, prompts: list[str] | None = None, resume: bool = False
    ) -> DomainResult:
        if prompts is None:
            if domain not in BUILTIN_DOMAINS:
                raise ValueError(f"domain: {domain!r} is not built in; pass its prompts")
            prompts = DOMAIN_PROMPTS[domain]["examples"]
        results = self.run({domain: list(prompts)}, resume=resume)
        if not results:
            raise RuntimeError(f"{domain}: stopped before training began")
        return results[0]

    def distill_all(
        self, domains: dict[str, list[str]] | None = None, resume: bool = False
    ) -> list[DomainResult]:
        if domains is None:
            domains = {d: DOMAIN_PROMPTS[d]["examples"] for d in BUILTIN_DOMAINS}
        return self.run(domains, resume=resume)

    # ---- the pipeline ---------------------------------------------------------------------
    def run(self, domains: dict[str, Domain], resume: bool = False) -> list[DomainResult]:
        try:
            run = self._start(domains, resume)
            self._teacher_pass(run)
            t_model, t_tok = self._release_teacher(run)
            for name in run.domains:
                if self.control.stop_requested or name not in run.outputs:
                    break
                result = self._train_domain(run, name, t_model, t_tok)
                if result.stopped:
                    break
            return self._finish(run)
        except Exception as e:
            self.sink(RunFailed(one_line(e), detail=e.__class__.__name__))
            raise

    def _start(self, domains: dict[str, Domain], resume: bool) -> _Run:
        cfg = self.config
        if not domains:
            raise ValueError("domain: no domains to distil")
        for name, prompts in domains.items():
            check_domain_name(name)
            if not (prompts.split.train if isinstance(prompts, DataDomain) else prompts):
                raise ValueError(f"domain: {name!r} has no prompts")
        # Before anything is written: an on-policy run must be able to hold its teacher.
        remote = self._connect() if self.remote else None
        resident = self._on_policy_teacher() if cfg.on_policy_ratio > 0 and remote is None else None
        output = Path(cfg.output).expanduser()
        if self.world.is_main:
            check_output_dir(output)
        # The cache must take the teacher's work: find out now, not after the generation.
        check_output_dir(self.cache_dir / "teacher", "cache")
        self.sink(PhaseStarted("load", None, 2, "finding models"))
        t_path, s_path = self._resolve_pair(teacher=remote is None)
        s_info = model_info(s_path)
        t_info = remote_model_info(remote) if remote else model_info(t_path)
        t_id = remote.identity if remote else identify_model(t_path, "teacher", self.cache_dir)
        s_id = identify_model(s_path, "student", self.cache_dir)
        same = t_id.weights == s_id.weights
        t_local = None if remote else t_path
        for warning in self._pair_warnings(t_local, s_path, same, s_info.hidden_size):
            self.sink(Log(warning, "warning"))
        if resume:  # a model replaced in place is refused before any work, nothing written
            for name in domains:
                fp = pair_fields(t_id, s_id)
                CheckpointStore(domain_dir(output, name), name, fp).check_models()
        est = estimate_memory(t_info, s_info, cfg)
        if warning := est.warning(cfg):
            self.sink(Log(warning, "warning"))
        self.sink(
            RunStarted(
                teacher=t_id.path,
                student=str(s_path),
                domains=list(domains),
                config=cfg,
                output=str(output),
                total_steps=cfg.num_iters * len(domains),
                teacher_weights=t_id.weights,
                student_weights=s_id.weights,
            )
        )
        return _Run(
            domains=domains,
            resume=resume,
            output=output,
            teacher=resident or RunTeacher(t_path, remote=remote),
            student_path=s_path,
            started=time.perf_counter(),
            teacher_id=t_id,
            student_id=s_id,
        )

    def _connect(self) -> ConnectedTeacher:
        return connect_run_teacher(
            self.teacher_model_id, self.config, self.teacher_token, self.teacher_tokenizer,
            self.cache_dir, self.sink,
        )  # fmt: skip

    def _on_policy_teacher(self) -> RunTeacher:
        """The teacher, loaded, for a run whose on-policy steps need it resident (even when
        its soft targets are cached); a teacher that cannot be loaded, or a pair that will
        not fit in memory together, is a one-line ConfigError naming on_policy_ratio."""
        cfg = self.config
        _, s_path = self._resolve_pair(teacher=False)
        try:
            t_path, _ = self._resolve_pair(student=False)
            teacher = RunTeacher(t_path)
            teacher.load(self.sink)
        except Exception as e:
            raise ConfigError(
                f"on_policy_ratio: {cfg.on_policy_ratio:g} needs the teacher in memory, but "
                f"it cannot be loaded ({one_line(e)}); set on_policy_ratio = 0 to train from "
                "its cached targets"
            ) from None
        est = estimate_memory(model_info(t_path), model_info(s_path), cfg)
        if refusal := est.on_policy_refusal(cfg):
            raise ConfigError(refusal)
        return teacher

    def _pair_warnings(
        self, t_path: Path | None, s_path: Path, same_weights: bool, hidden: int
    ) -> list[str]:
        out = []
        if same_weights or (t_path is not None and t_path.resolve() == s_path.resolve()):
            out.append("teacher and student are the same model: distillation has little to teach")
        if hidden and self.config.lora_rank > hidden:
            out.append(
                f"lora_rank {self.config.lora_rank} is above the student's hidden size {hidden}: "
                "the extra rank adds parameters, not capacity"
            )
        return out

    def _teacher_pass(self, run: _Run) -> None:
        """Responses and soft targets for every domain (from the cache when it has them)."""
        cfg = self.config
        removed, nbytes = sweep_stale_cache(self.cache_dir)
        if removed:
            self.sink(
                Log(
                    f"teacher cache: removed {removed} files ({nbytes / 1e6:.1f} MB) in "
                    f"{self.cache_dir / 'teacher'} written by an older kd that did not record "
                    "which teacher made them; this run rebuilds what it needs"
                )
            )
        tpass, gpass = run.teacher.passes(
            TeacherPass(self.cache_dir, run.teacher_id, cfg),
            GivenPass(self.cache_dir, run.teacher_id, cfg),
            cfg,
            self.sink,
        )
        for name, prompts in run.domains.items():
            size = len(prompts.split.train) if isinstance(prompts, DataDomain) else len(prompts)
            self.sink(PhaseStarted("teacher", name, size))
            started = time.perf_counter()

            def progress(
                done: int, total: int, what: str, name: str = name, started: float = started
            ) -> None:
                el = time.perf_counter() - started
                eta = el / done * (total - done) if done else None
                self.sink(Progress("teacher", name, done, total, eta, what))

            try:
                if isinstance(prompts, DataDomain):
                    out = self._data_pass(run, (tpass, gpass), name, prompts, progress)
                else:
                    out = tpass.run(
                        name,
                        prompts,
                        cfg.teacher_mode == "offline",
                        lambda: run.teacher.load(self.sink),
                        progress,
                        warn=lambda m: self.sink(Log(m, "warning")),
                        world=self.world,
                        should_stop=lambda: self.control.stop_requested,
                    )
            except GenerationStopped as e:
                kept = "; the finished responses are kept for the next run" if e.done else ""
                self.sink(Log(f"{name}: {e}{kept}", "warning"))
                return
            run.outputs[name] = out
            self.sink(
                CacheUsed(
                    name, str(out.path), out.from_cache, len(out.sequences), out.response_tokens
                )
            )
            if self.control.stop_requested:
                return

    def _data_pass(
        self, run: _Run, passes: tuple[Any, Any], name: str, domain: DataDomain, progress: Any
    ) -> TeacherOutputs:
        """A data domain's teacher side (kd_core/data_run.py); the format is named in the log."""
        split = domain.split
        self.sink(
            Log(
                f"{name}: {domain.train_file}: {domain.format}, {len(domain.source.train.rows)} "
                f"rows; teacher answers: {domain.answers}; held out: {len(split.held_out)} rows "
                f"({'valid.jsonl' if split.held_out_from == 'valid' else 'seeded 5%'})"
            )
        )
        args = DataPassArgs(
            self.config,
            *passes,
            lambda: self._teacher_tokenizer(run),
            lambda: run.teacher.load(self.sink),
            progress,
            lambda m: self.sink(Log(m, "warning")),
            lambda: self.control.stop_requested,
            self.world,
            run.teacher.served_vocab(),
        )
        targets = data_teacher_pass(name, domain, args)
        if targets.given_out is None and targets.generated is None:
            raise NoExamplesError(
                f"domain: 0 of {len(split.train)} rows of {name!r} have an answer token within "
                f"max_seq_length {self.config.max_seq_length}; raise max_seq_length"
            )
        run.data[name] = targets
        return targets.primary

    def _teacher_tokenizer(self, run: _Run) -> Any:
        """The teacher's tokenizer without its weights (rendering and cache keys need no
        model); the loaded teacher's when it is in memory."""
        return run.teacher.load_tokenizer()

    def _release_teacher(self, run: _Run) -> tuple[Any, Any]:
        """(teacher model or None, teacher tokenizer). Offline, the teacher is released here:
        it never sits in memory beside the student being trained."""
        if run.teacher.remote is not None:
            return run.teacher.load(self.sink)  # (None, its tokenizer): nothing to release
        if self.config.teacher_mode == "online" or self.config.on_policy_ratio > 0:
            return run.teacher.load(self.sink)  # on-policy steps score with it: resident
        tokenizer = run.teacher.tokenizer
        if run.teacher.model is not None:
            run.teacher.model = None
            release()
        if tokenizer is None:
            tokenizer = run.teacher.load_tokenizer()
        return None, tokenizer

    def _train_domain(self, run: _Run, name: str, t_model: Any, t_tok: Any) -> DomainResult:
        cfg = self.config
        self.sink(PhaseStarted("student", name, cfg.num_iters))
        student, s_tok = load_model(run.student_path, "student")
        if run.alignment is None:
            run.alignment = self._plan(run, name, t_model, t_tok, s_tok, student)
        prompts = run.domains[name]
        data_summary = None
        if isinstance(prompts, DataDomain):
            examples, data_summary = self._data_examples(run, name, prompts, s_tok, t_tok)
            prompts = [prompts.key()]  # the fingerprint's "prompts": the data's content
        else:
            examples = self._examples(name, prompts, run.outputs[name], s_tok, run.alignment, t_tok)
        mx.random.seed(cfg.seed)  # same LoRA init for the same seed
        n_layers = apply_lora(student, cfg)
        sampler = None
        if cfg.on_policy_ratio > 0:
            t_eos = (eos_ids(t_tok) or [0])[0]
            sampler = StudentSampler(student, s_tok, cfg, run.alignment, t_eos, t_tok)
        trainer = StudentTrainer(
            student,
            cfg,
            examples.examples,
            domain_dir(run.output, name),
            adapter_config(cfg, n_layers, str(run.student_path), run.teacher.name, name),
            domain=name,
            sink=self.sink,
            control=self.control,
            teacher=t_model,
            alignment=run.alignment,
            world=self.world,
            fingerprint=run_fingerprint(
                cfg,
                teacher=run.teacher_id,
                student=run.student_id,
                vocab_strategy=run.alignment.strategy,
                prompts=prompts,
            ),
            sampler=sampler,
            remote=run.teacher.step_targets(self.config, run.alignment),
        )
        result = trainer.train(resume=run.resume)
        result.teacher_cache = str(run.outputs[name].path)
        result.examples_cut, result.examples_skipped = examples.cut, examples.skipped
        result.vocab_alignment = examples.vocab_alignment or {"strategy": run.alignment.strategy}
        result.data = data_summary
        run.results.append(result)
        self.sink(DomainFinished(name, result))
        self._write_summary(run)
        del trainer, student
        release()
        return result

    def _plan(
        self, run: _Run, name: str, t_model: Any, t_tok: Any, s_tok: Any, student: Any
    ) -> VocabAlignment:
        cfg = self.config
        t_vocab = vocab_size(t_model) if t_model is not None else run.outputs[name].teacher_vocab
        alignment = plan_vocab_alignment(
            t_tok, s_tok, t_vocab, vocab_size(student), cfg.vocab_strategy, cfg.align_targets
        )
        self.sink(Log(f"vocabulary: {alignment.explanation}"))
        if cfg.on_policy_ratio > 0 and alignment.aligned and alignment.pieces is None:
            self.sink(Log(ALIGNED_ON_POLICY_WARNING, "warning"))
        return alignment

    def _data_examples(
        self, run: _Run, name: str, domain: DataDomain, s_tok: Any, t_tok: Any
    ) -> tuple[ExampleSet, dict[str, Any]]:
        """A data domain's examples (kd_core/data_run.py) and its kd_summary.json block."""
        assert run.alignment is not None
        return checked_data_examples(
            name, domain, run.data[name], (s_tok, t_tok), run.alignment, self.config, self.sink
        )

    def _examples(
        self,
        name: str,
        prompts: list[str],
        outputs: TeacherOutputs,
        s_tok: Any,
        alignment: VocabAlignment,
        t_tok: Any,
    ) -> ExampleSet:
        cfg = self.config
        online = cfg.teacher_mode == "online"
        if alignment.strategy == "align":
            ex = self._aligned_examples(name, prompts, outputs, s_tok, alignment, t_tok)
        else:
            ex = build_examples(prompts, outputs, s_tok, alignment, online, cfg.max_seq_length)
        if not ex.examples:
            raise NoExamplesError(
                f"domain: 0 of {len(prompts)} examples of {name!r} fit in max_seq_length "
                f"{cfg.max_seq_length}; raise max_seq_length or shorten the prompts"
            )
        if ex.cut or ex.skipped:
            self.sink(
                Log(
                    f"{name}: {ex.cut} of {len(prompts)} prompts cut from the front and "
                    f"{ex.skipped} skipped to fit max_seq_length {cfg.max_seq_length}",
                    "warning",
                )
            )
        if ex.unmapped:
            self.sink(
                Log(
                    f"{name}: {ex.unmapped} response tokens have no student token; masked",
                    "warning",
                )
            )
        return ex

    def _aligned_examples(
        self,
        name: str,
        prompts: list[str],
        outputs: TeacherOutputs,
        s_tok: Any,
        alignment: VocabAlignment,
        t_tok: Any,
    ) -> ExampleSet:
        """Examples across two tokenizers; a student tokenizer that cannot read the teacher's
        text, or spans covering under half of it, is a one-line error before training."""
        cfg = self.config
        pair = f"{self.teacher_model_id} -> {self.student_model_id}"
        try:
            al = build_aligned_examples(
                prompts, outputs, t_tok, s_tok, alignment, cfg.teacher_mode == "online",
                cfg.max_seq_length, cfg.top_k,
            )  # fmt: skip
        except AlignmentError as e:
            raise ConfigError(
                f"vocab_strategy: align cannot read {name!r} for {pair}: the student's {e}; "
                "0% of response characters covered"
            ) from None
        summary = al.stats.summary()
        covered = summary["response_chars_covered"]
        if covered < MIN_ALIGN_COVERAGE:
            raise ConfigError(
                f"vocab_strategy: align covers only {covered:.0%} of {name!r}'s response "
                f"characters for {pair} (at least {MIN_ALIGN_COVERAGE:.0%} needed); raise "
                f"max_seq_length ({cfg.max_seq_length}) or pick a student of the teacher's family"
            )
        self.sink(Log(f"{name}: {describe_alignment(summary)}"))
        return ExampleSet(al.examples, 0, al.cut, al.skipped, summary)

    def _finish(self, run: _Run) -> list[DomainResult]:
        stopped = self.control.stop_requested or any(r.stopped for r in run.results)
        self._write_summary(run)
        self.sink(RunFinished(str(run.output / SUMMARY_FILE), list(run.results), stopped))
        return run.results

    def _write_summary(self, run: _Run) -> None:
        if self.world.is_main and run.results:
            write_summary(
                run.output / SUMMARY_FILE,
                run.teacher_id,
                run.student_id,
                self.config,
                run.results,
                time.perf_counter() - run.started,
            )

    def _resolve_pair(self, teacher: bool = True, student: bool = True) -> tuple[Path, Path]:
        """Resolve both models (or one: the other is then Path()); a first use of the demo
        pair builds it, with progress."""
        started = time.perf_counter()
        announced: list[bool] = []

        def on_build(what: str, done: int, total: int) -> None:
            if not announced:
                announced.append(True)
                self.sink(
                    PhaseStarted(
                        "build", None, total, "building the built-in demo pair (first use only)"
                    )
                )
            el = time.perf_counter() - started
            eta = el / done * (total - done) if done else None
            self.sink(Progress("build", None, done, total, eta, what))

        demo.set_build_progress(on_build)
        try:
            # Rank 0 first: on one machine the others then find the demo pair built.
            if not self.world.is_main:
                self.world.barrier()
            t_path = s_path = Path()
            if teacher:
                t_path = resolve_model(self.teacher_model_id, "teacher", self.allow_download)
            if student:
                s_path = resolve_model(self.student_model_id, "student", self.allow_download)
            if self.world.is_main:
                self.world.barrier()
        finally:
            demo.set_build_progress(None)
        return t_path, s_path


__all__ = ["TrueKnowledgeDistiller", "DomainResult", "OutputError", "ModelError"]
