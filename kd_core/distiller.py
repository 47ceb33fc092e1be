"""TrueKnowledgeDistiller: the seed's Python API over the teacher pass and the student pass.

    distiller = TrueKnowledgeDistiller("path/or/hub-id", "path/or/hub-id", KDConfig(...))
    result = distiller.distill_domain("thinking", DOMAIN_PROMPTS["thinking"]["examples"])
    results = distiller.distill_all()

With no models named, the built-in demo pair is used. Progress goes to `on_event` as the
typed events of kd_core.events. Offline mode runs the teacher pass for every domain first
and releases the teacher before any student trains.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from kd_core.atomic_io import atomic_write_json
from kd_core.config import KDConfig
from kd_core.control import RunControl
from kd_core.data import Example, format_prompt
from kd_core.distributed import world as get_world
from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, check_domain_name
from kd_core.events import (
    CacheUsed,
    DomainFinished,
    EventSink,
    Log,
    PhaseStarted,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    null_sink,
)
from kd_core.models import (
    ModelError,
    load_model,
    model_fingerprint,
    model_info,
    release,
    resolve_model,
)
from kd_core.preflight import estimate_memory
from kd_core.teacher import TeacherOutputs, TeacherPass, default_cache_dir
from kd_core.trainer import DomainResult, StudentTrainer, adapter_config, apply_lora
from kd_core.vocab import VocabAlignment, plan_vocab_alignment

SUMMARY_FILE = "kd_summary.json"


class OutputError(ValueError):
    """The output folder cannot be used (one-line message)."""


def check_output_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".kd-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output: cannot write to {path} ({e.strerror or e})") from None
    return path


def domain_dir(output: Path, domain: str) -> Path:
    """<output>/<domain>, refusing names that would land outside the output folder."""
    check_domain_name(domain)
    d = (output / domain).resolve()
    if d.parent != output.resolve():
        raise OutputError(f"domain: {domain!r} would be written outside {output}")
    return d


def _vocab_size(model: Any) -> int:
    return int(model(mx.array([[0]], dtype=mx.int32)).shape[-1])


def build_examples(
    prompts: list[str],
    outputs: TeacherOutputs,
    student_tokenizer: Any,
    alignment: VocabAlignment,
    online: bool,
) -> tuple[list[Example], int]:
    """Teacher sequences -> student examples. Returns (examples, unmappable response tokens).

    The student reads its own formatting of the prompt, then the teacher's response mapped
    token by token into its vocabulary, so response positions line up one to one with the
    teacher's. A response token the student vocabulary lacks is masked out (neither CE nor
    KD) and fed as EOS.
    """
    t2s = alignment.teacher_to_student
    eos = int(student_tokenizer.eos_token_id)
    examples: list[Example] = []
    unmapped = 0
    for i, prompt in enumerate(prompts):
        seq, plen = outputs.sequences[i], outputs.prompt_lens[i]
        resp_t = seq[plen:]
        if len(resp_t) == 0:
            continue
        mapped = np.where(resp_t < len(t2s), t2s[np.minimum(resp_t, len(t2s) - 1)], -1)
        valid = mapped >= 0
        unmapped += int((~valid).sum())
        mapped = np.where(valid, mapped, eos).astype(np.int32)
        s_prompt = np.array(format_prompt(student_tokenizer, prompt), np.int32)
        ex = Example(np.concatenate([s_prompt, mapped]), len(s_prompt), valid=valid)
        if online:
            ex.teacher_tokens = seq
            ex.teacher_prompt_len = plen
        else:
            ids_t = outputs.topk_ids[i]
            ids_s = t2s[np.minimum(ids_t, len(t2s) - 1)]
            keep = (ids_s >= 0) & (ids_t < len(t2s))
            ex.topk_ids = np.where(keep, ids_s, 0).astype(np.int32)
            ex.topk_logprobs = np.where(keep, outputs.topk_logprobs[i], -np.inf).astype(np.float32)
        examples.append(ex)
    return examples, unmapped


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

    # ---- the seed's API -------------------------------------------------------------------
    def distill_domain(
        self, domain: str, prompts: list[str] | None = None, resume: bool = False
    ) -> DomainResult:
        if prompts is None:
            if domain not in BUILTIN_DOMAINS:
                raise ValueError(f"domain: {domain!r} is not built in; pass its prompts")
            prompts = DOMAIN_PROMPTS[domain]["examples"]
        return self.run({domain: list(prompts)}, resume=resume)[0]

    def distill_all(
        self, domains: dict[str, list[str]] | None = None, resume: bool = False
    ) -> list[DomainResult]:
        if domains is None:
            domains = {d: DOMAIN_PROMPTS[d]["examples"] for d in BUILTIN_DOMAINS}
        return self.run(domains, resume=resume)

    # ---- the pipeline ---------------------------------------------------------------------
    def run(self, domains: dict[str, list[str]], resume: bool = False) -> list[DomainResult]:
        try:
            return self._run(domains, resume)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            self.sink(RunFailed(msg, detail=e.__class__.__name__))
            raise

    def _run(self, domains: dict[str, list[str]], resume: bool) -> list[DomainResult]:
        cfg = self.config.validate()
        if not domains:
            raise ValueError("domain: no domains to distil")
        for name, prompts in domains.items():
            check_domain_name(name)
            if not prompts:
                raise ValueError(f"domain: {name!r} has no prompts")
        output = Path(cfg.output).expanduser()
        if self.world.is_main:
            check_output_dir(output)
        out_dirs = {d: domain_dir(output, d) for d in domains}
        self.sink(PhaseStarted("load", None, 2, "finding models"))
        t_path, s_path = self._resolve_pair()
        online = cfg.teacher_mode == "online"
        est = estimate_memory(model_info(t_path), model_info(s_path), cfg)
        if warning := est.warning(cfg):
            self.sink(Log(warning, "warning"))
        self.sink(
            RunStarted(
                str(t_path),
                str(s_path),
                list(domains),
                cfg.to_dict(),
                str(output),
                cfg.num_iters * len(domains),
            )
        )
        t0 = time.perf_counter()

        # Teacher pass for every domain (teacher loaded at most once, only on a cache miss).
        teacher: dict[str, Any] = {}

        def load_teacher() -> tuple[Any, Any]:
            if "model" not in teacher:
                self.sink(Log(f"loading teacher {t_path}"))
                teacher["model"], teacher["tokenizer"] = load_model(t_path, "teacher")
            return teacher["model"], teacher["tokenizer"]

        tpass = TeacherPass(self.cache_dir, model_fingerprint(t_path), cfg)
        outputs: dict[str, TeacherOutputs] = {}
        for name, prompts in domains.items():
            self.sink(PhaseStarted("teacher", name, len(prompts)))
            started = time.perf_counter()

            def progress(
                done: int, total: int, what: str, name: str = name, started: float = started
            ) -> None:
                el = time.perf_counter() - started
                eta = el / done * (total - done) if done else None
                self.sink(Progress("teacher", name, done, total, eta, what))

            out = tpass.run(
                name,
                prompts,
                not online,
                load_teacher,
                progress,
                warn=lambda m: self.sink(Log(m, "warning")),
                world=self.world,
            )
            outputs[name] = out
            self.sink(
                CacheUsed(
                    name, str(out.path), out.from_cache, len(out.sequences), out.response_tokens
                )
            )
            if self.control.stop_requested:
                break

        if online:
            t_model, t_tok = load_teacher()
        else:
            t_model = None
            if teacher:
                t_tok = teacher["tokenizer"]
                teacher.clear()
                release()  # the teacher never sits beside the student being trained
            else:
                from mlx_lm.utils import load_tokenizer

                t_tok = load_tokenizer(t_path)
        t_vocab = (
            _vocab_size(t_model)
            if t_model is not None
            else next(iter(outputs.values())).teacher_vocab
        )

        results: list[DomainResult] = []
        summary_path = output / SUMMARY_FILE
        alignment: VocabAlignment | None = None
        for name, prompts in domains.items():
            if self.control.stop_requested or name not in outputs:
                break
            self.sink(PhaseStarted("student", name, cfg.num_iters))
            student, s_tok = load_model(s_path, "student")
            if alignment is None:
                alignment = plan_vocab_alignment(
                    t_tok, s_tok, t_vocab, _vocab_size(student), cfg.vocab_strategy
                )
                self.sink(Log(f"vocabulary: {alignment.explanation}"))
            examples, unmapped = build_examples(prompts, outputs[name], s_tok, alignment, online)
            if not examples:
                raise ValueError(f"domain: {name!r}: the teacher wrote no response tokens")
            if unmapped:
                self.sink(
                    Log(
                        f"{name}: {unmapped} response tokens have no student token; masked",
                        "warning",
                    )
                )
            mx.random.seed(cfg.seed)  # same LoRA init for the same seed
            n_layers = apply_lora(student, cfg)
            trainer = StudentTrainer(
                student,
                cfg,
                examples,
                out_dirs[name],
                adapter_config(cfg, n_layers, str(s_path), str(t_path), name),
                domain=name,
                sink=self.sink,
                control=self.control,
                teacher=t_model if online else None,
                alignment=alignment,
                world=self.world,
            )
            result = trainer.train(resume=resume)
            result.teacher_cache = str(outputs[name].path)
            results.append(result)
            self.sink(DomainFinished(name, result.to_dict()))
            self._write_summary(
                summary_path, t_path, s_path, cfg, results, time.perf_counter() - t0
            )
            del trainer, student
            release()
            if result.stopped:
                break
        stopped = self.control.stop_requested or any(r.stopped for r in results)
        self._write_summary(summary_path, t_path, s_path, cfg, results, time.perf_counter() - t0)
        self.sink(RunFinished(str(summary_path), [r.to_dict() for r in results], stopped))
        return results

    def _resolve_pair(self) -> tuple[Path, Path]:
        """Resolve both models; a first use of the demo pair builds it, with progress."""
        from kd_core import demo

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
            t_path = resolve_model(self.teacher_model_id, "teacher", self.allow_download)
            s_path = resolve_model(self.student_model_id, "student", self.allow_download)
            if self.world.is_main:
                self.world.barrier()
        finally:
            demo.set_build_progress(None)
        return t_path, s_path

    def _write_summary(
        self,
        path: Path,
        t_path: Path,
        s_path: Path,
        cfg: KDConfig,
        results: list[DomainResult],
        seconds: float,
    ) -> None:
        """kd_summary.json over all domains; entries of earlier runs for other domains stay."""
        if not self.world.is_main:
            return
        previous: dict[str, Any] = {}
        if path.exists():
            try:
                previous = json.loads(path.read_text()).get("domains", {})
            except (OSError, json.JSONDecodeError, AttributeError):
                previous = {}
        domains = dict(previous) | {r.domain: r.to_dict() for r in results}
        atomic_write_json(
            path,
            {
                "teacher": str(t_path),
                "student": str(s_path),
                "config": cfg.to_dict(),
                "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "run_seconds": round(seconds, 3),
                "domains": domains,
            },
        )


ProgressCallback = Callable[[int, int], None]
__all__ = ["TrueKnowledgeDistiller", "DomainResult", "OutputError", "ModelError"]
