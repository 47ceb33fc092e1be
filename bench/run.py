"""kd's benchmark suite: how much of the machine kd's distillation gets, side by side.

    .venv/bin/python bench/run.py [--quick] [--only KEY[,KEY...]]

Every ratio is measured in one run, its two sides in separate worker processes driven in
alternation (see bench/worker.py), medians reported. Prints a table and writes
bench/results/latest.json (atomically). See bench/README.md for what each key means.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BATCH,
    BIG_TEACHER,
    FLOPS_FORMULA,
    LARGE_SEQ,
    LARGE_STUDENT,
    RESULTS,
    SEQ,
    STUDENT,
    TEACHER,
    atomic_write_json,
    forward_flops,
    lora_train_flops,
    machine_facts,
    median,
)
from bench.worker import Worker  # noqa: E402

# key -> (comparison, threshold). ">=" : higher is better.
GOALS: dict[str, tuple[str, float]] = {
    "kd_vs_torch_tokens_ratio": (">=", 1.0),
    "kd_vs_sft_step_ratio": ("<=", 1.15),
    "offline_vs_online_speedup": (">=", 3.0),
    # The same figure with a teacher 9.4x the student (bench/common.py BIG_TEACHER): extra.
    "offline_vs_online_speedup_big_teacher": (">=", 3.0),
    "kd_vs_mlxlm_ce_peak_memory_ratio": ("<=", 0.5),
    "kd_vs_mlxlm_ce_step_time_ratio_large_vocab": ("<=", 1.0),
    "cache_bytes_per_token": ("<=", 256.0),
    "mfu": (">=", 0.6),
    "mlx_vs_numpy_matmul_ratio": ("<=", 1.3),
    # An on-policy step (the student samples SEQ - PROMPT_LEN tokens per row, the teacher
    # scores them) / an online forward-KL step, same shapes: reported, aim <= 3.
    "on_policy_step_ratio": ("<=", 3.0),
    # The slowest divergence / forward KL, offline fused step (kd_core/losses/divergences.py).
    "divergence_step_ratio_max": ("<=", 1.2),
    # Cross-tokenizer alignment (building the aligned examples, once per run) per training
    # step of demo-teacher -> demo-student-sp (bench/align.py).
    "align_overhead_ratio": ("<=", 0.05),
}


@dataclass(frozen=True)
class Plan:
    """How much each section measures: quick (< 10 min on 2 cores) or full."""

    quick: bool
    matmul_repeats: int
    sft_rounds: int
    sft_steps: int
    torch_rounds: int
    torch_steps: int
    large_rounds: int
    large_steps: int  # timed steps after the first; 0 = time the first (cold) step
    distil_iters: int
    profile_large: bool

    @staticmethod
    def make(quick: bool) -> Plan:
        if quick:
            return Plan(True, 5, 2, 2, 2, 1, 1, 0, 8, False)
        return Plan(False, 9, 3, 3, 3, 2, 2, 1, 200, True)


@dataclass
class Context:
    plan: Plan
    tmp: Path
    results: dict[str, Any]
    details: dict[str, Any]
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    pair: str | None = None

    def log(self, msg: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)

    def worker(
        self, factory: str, name: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> Worker:
        return Worker(factory, self.tmp / "logs" / f"{name}.log", env=env, **kwargs)

    def ensure_pair(self) -> str:
        """Teacher 8 x 768 and student 4 x 512 (vocab 8192), written once per run."""
        if self.pair is None:
            self.log("building the teacher/student folders")
            with self.worker("bench.steps:Builder", "build") as w:
                info = w.call("build", root=str(self.tmp / "pair"))
            self.facts.update({k: info[k] for k in ("mlx", "mlx_device", "blas_preloaded")})
            self.pair = str(self.tmp / "pair")
        return self.pair


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _alternate(
    ctx: Context, a: Worker, b: Worker, rounds: int, n_a: int, n_b: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drive a then b, `rounds` times, so outside load lands on both sides alike."""
    ra, rb = [], []
    for r in range(rounds):
        ra.append(a.call("steps", n=n_a))
        rb.append(b.call("steps", n=n_b))
        ctx.log(
            f"  round {r + 1}/{rounds}: {median(ra[-1]['times']):.2f} s vs "
            f"{median(rb[-1]['times']):.2f} s"
        )
    return ra, rb


def _times(runs: list[dict[str, Any]], first: bool = False) -> list[float]:
    """Timed steps of several calls; with first=True, each call's first step instead."""
    return [r["warmup"] for r in runs] if first else [t for r in runs for t in r["times"]]


# ---- sections ---------------------------------------------------------------------------


def sec_matmul(ctx: Context) -> None:
    """MLX vs numpy 1024^3 with OpenBLAS preloaded; the same without; numpy's sgemm peak."""
    p = ctx.plan
    with ctx.worker("bench.matmul:Matmul", "matmul", preload=True) as w:
        pre = w.call("compare", n=1024, repeats=p.matmul_repeats)
        peak = w.call("sgemm_peak", n=2048, repeats=5)
    with ctx.worker(
        "bench.matmul:Matmul", "matmul-nopreload", env={"KD_NO_BLAS_PRELOAD": "1"}, preload=False
    ) as w:
        raw = w.call("compare", n=1024, repeats=3)
    ratio = median(pre["mlx_s"]) / median(pre["numpy_s"])
    ctx.results["mlx_vs_numpy_matmul_ratio"] = ratio
    ctx.details["matmul"] = {
        "n": 1024,
        "preloaded": {
            "blas": pre["blas_preloaded"],
            "mlx_median_s": median(pre["mlx_s"]),
            "numpy_median_s": median(pre["numpy_s"]),
            "ratio": ratio,
            "mlx_s": pre["mlx_s"],
            "numpy_s": pre["numpy_s"],
        },
        "without_preload": {
            "mlx_median_s": median(raw["mlx_s"]),
            "numpy_median_s": median(raw["numpy_s"]),
            "ratio": median(raw["mlx_s"]) / median(raw["numpy_s"]),
        },
        "sgemm_2048": peak,
    }
    ctx.facts["sgemm_gflops"] = round(peak["flops_per_s"] / 1e9, 1)


def sec_sft(ctx: Context) -> None:
    """kd's offline KD step vs mlx-lm's LoRA CE step: same student, same batch."""
    p, pair = ctx.plan, ctx.ensure_pair()
    with (
        ctx.worker(
            "bench.steps:KDStep",
            "kd-offline",
            mode="offline",
            pair=pair,
            work=str(ctx.tmp / "kd-offline"),
        ) as kd,
        ctx.worker("bench.steps:MlxLmCEStep", "mlxlm-ce", pair=pair) as ce,
    ):
        ctx.log("  kd offline step vs mlx-lm CE step (student 4 x 512, 4 x 256)")
        rk, rc = _alternate(ctx, kd, ce, p.sft_rounds, p.sft_steps, p.sft_steps)
    t_kd, t_ce = median(_times(rk)), median(_times(rc))
    ctx.results["kd_vs_sft_step_ratio"] = t_kd / t_ce
    ctx.details["sft"] = {
        "kd_offline_step_median_s": t_kd,
        "mlxlm_ce_step_median_s": t_ce,
        # Outside load only ever adds time: the best steps are a second, steadier estimate.
        "ratio_of_minimums": min(_times(rk)) / min(_times(rc)),
        "kd_offline_steps_s": _times(rk),
        "mlxlm_ce_steps_s": _times(rc),
        "kd_offline_first_step_s": rk[0]["warmup"],
        "mlxlm_ce_first_step_s": rc[0]["warmup"],
        "kd_offline_peak_bytes": max(r["peak_bytes"] for r in rk),
        "mlxlm_ce_peak_bytes": max(r["peak_bytes"] for r in rc),
        "chunked_loss": rk[0]["chunked_loss"],
        "positions": rk[0]["positions"],
        "response_tokens": rk[0]["response_tokens"],
    }


def sec_torch(ctx: Context) -> None:
    """kd's online KD step vs PyTorch + transformers + peft doing the same work."""
    import numpy as np

    p, pair = ctx.plan, ctx.ensure_pair()
    with (
        ctx.worker("bench.torch_side:TorchKDStep", "torch", pair=pair) as th,
        ctx.worker(
            "bench.steps:KDStep",
            "kd-online",
            mode="online",
            pair=pair,
            work=str(ctx.tmp / "kd-online"),
        ) as kd,
    ):
        ctx.facts.update({k: v for k, v in th.call("facts").items() if k != "trainable_params"})
        # Same weights on both sides: the teachers' logits must agree.
        th.call("teacher_logits", path=str(ctx.tmp / "torch_logits.npy"))
        kd.call("teacher_logits", path=str(ctx.tmp / "mlx_logits.npy"))
        diff = float(
            np.abs(
                np.load(ctx.tmp / "torch_logits.npy") - np.load(ctx.tmp / "mlx_logits.npy")
            ).max()
        )
        if diff > 1e-3:
            raise RuntimeError(
                f"MLX and transformers disagree on the teacher's logits "
                f"(max |diff| {diff:.3g}): not the same model"
            )
        ctx.log("  kd online step vs torch + transformers + peft (teacher 8x768, student 4x512)")
        rk, rt = _alternate(ctx, kd, th, p.torch_rounds, p.torch_steps, p.torch_steps)
        ctx.log("  profile split (teacher forward, student CE-only step)")
        prof_kd = kd.call("profile", repeats=1 if p.quick else 2)
        prof_th = th.call("profile", repeats=1 if p.quick else 2)
        trainable = th.call("facts")["trainable_params"]
    t_kd, t_th = median(_times(rk)), median(_times(rt))
    positions = rk[0]["positions"]
    ctx.results["kd_vs_torch_tokens_ratio"] = (positions / t_kd) / (positions / t_th)
    ctx.details["torch"] = {
        "kd_online_step_median_s": t_kd,
        "torch_step_median_s": t_th,
        "ratio_of_minimums": min(_times(rt)) / min(_times(rk)),
        "kd_online_tokens_per_s": positions / t_kd,
        "torch_tokens_per_s": positions / t_th,
        "tokens_counted": "positions processed per step (batch x seq)",
        "positions": positions,
        "response_tokens": rk[0]["response_tokens"],
        "kd_online_steps_s": _times(rk),
        "torch_steps_s": _times(rt),
        "kd_online_first_step_s": rk[0]["warmup"],
        "torch_first_step_s": rt[0]["warmup"],
        "teacher_logits_max_abs_diff": diff,
        "lora_trainable_params": trainable,
        "profile": {
            "kd": {
                **prof_kd,
                "loss_and_rest_s": t_kd
                - prof_kd["teacher_forward_s"]
                - prof_kd["student_ce_step_s"],
            },
            "torch": {
                **prof_th,
                "loss_and_rest_s": t_th
                - prof_th["teacher_forward_s"]
                - prof_th["student_ce_step_s"],
            },
        },
    }
    ctx.details["mfu_online"] = {
        "flops": forward_flops(TEACHER, BATCH, SEQ) + lora_train_flops(STUDENT, BATCH, SEQ),
        "step_s": t_kd,
    }


def sec_large(ctx: Context) -> None:
    """Vocabulary 151,936: kd's offline step (chunked loss) vs mlx-lm's CE step, each in its
    own process so each peak is its own."""
    p = ctx.plan
    rk, rc, prof = [], [], None
    cold = p.large_steps == 0
    for r in range(p.large_rounds):
        ctx.log(f"  large vocab round {r + 1}/{p.large_rounds}: mlx-lm CE step")
        with ctx.worker("bench.steps:MlxLmCEStep", f"large-ce-{r}", large=True) as w:
            rc.append(w.call("steps", n=p.large_steps))
        ctx.log(
            f"  large vocab round {r + 1}/{p.large_rounds}: kd offline step "
            f"(CE {median(_times(rc[-1:], cold)):.1f} s)"
        )
        with ctx.worker(
            "bench.steps:KDStep",
            f"large-kd-{r}",
            mode="offline",
            large=True,
            work=str(ctx.tmp / f"large-{r}"),
        ) as w:
            rk.append(w.call("steps", n=p.large_steps))
            if p.profile_large and r == 0:
                ctx.log("  profile of the chunked step")
                try:
                    prof = w.call("profile_chunked", repeats=1)
                except Exception as e:  # a profile is a bonus: keep the section's figures
                    prof = {"error": f"{e.__class__.__name__}: {e}"}
        ctx.log(f"  kd {median(_times(rk[-1:], cold)):.1f} s")
    peak_kd = max(r["peak_bytes"] for r in rk)
    peak_ce = max(r["peak_bytes"] for r in rc)
    t_kd, t_ce = median(_times(rk, cold)), median(_times(rc, cold))
    if cold:
        ctx.notes.append(
            "kd_vs_mlxlm_ce_step_time_ratio_large_vocab (quick): one step per side, the first "
            "(it includes compiling, small next to a 20-40 s step; a full run times a warm-up "
            "and later steps apart: details.large_vocab, *_first_step_s vs *_steps_s)."
        )
    ctx.results["kd_vs_mlxlm_ce_peak_memory_ratio"] = peak_kd / peak_ce
    ctx.results["kd_vs_mlxlm_ce_step_time_ratio_large_vocab"] = t_kd / t_ce
    ctx.details["large_vocab"] = {
        "student": f"{LARGE_STUDENT.layers} x {LARGE_STUDENT.hidden}, vocab {LARGE_STUDENT.vocab}",
        "batch": f"{BATCH} x {LARGE_SEQ}",
        "kd_peak_bytes": peak_kd,
        "mlxlm_ce_peak_bytes": peak_ce,
        "kd_step_median_s": t_kd,
        "mlxlm_ce_step_median_s": t_ce,
        "kd_steps_s": _times(rk, cold),
        "mlxlm_ce_steps_s": _times(rc, cold),
        "first_step_timed": cold,
        "kd_first_step_s": [r["warmup"] for r in rk],
        "mlxlm_ce_first_step_s": [r["warmup"] for r in rc],
        "chunked_loss": rk[0]["chunked_loss"],
        "targets": "synthetic top-32 (no teacher at this vocabulary; cost does not depend on "
        "the values)",
        "profile_chunked": prof,
    }


def _offline_vs_online(ctx: Context, teacher: str, tag: str) -> tuple[float, dict[str, Any]]:
    """One domain distilled offline then online with `teacher`; (online / offline, details)."""
    p, pair = ctx.plan, ctx.ensure_pair()
    iters = p.distil_iters
    runs: dict[str, Any] = {}
    cache_off, cache_on = ctx.tmp / f"cache-offline{tag}", ctx.tmp / f"cache-online{tag}"

    def run(mode: str, cache: Path) -> dict[str, Any]:
        with ctx.worker("bench.distil:Distil", f"distil-{mode}{tag}") as w:
            return w.call(
                "run",
                pair=pair,
                mode=mode,
                iters=iters,
                cache_dir=str(cache),
                output=str(ctx.tmp / f"out-{mode}{tag}"),
                teacher=teacher,
            )

    ctx.log(f"  offline run ({teacher}): 50 prompts, {iters} iters, fresh cache")
    runs["offline"] = run("offline", cache_off)
    ctx.log(f"  offline: {runs['offline']['wall_s']:.0f} s")
    if p.quick:
        # Online mode samples the very same responses (same teacher, prompts, seed, max
        # tokens): hand it the generation file so quick mode pays for sampling once, and add
        # the offline run's measured sampling time to the online wall time below.
        (cache_on / "teacher").mkdir(parents=True)
        for f in (cache_off / "teacher").glob("*-gen-*.safetensors"):
            shutil.copy(f, cache_on / "teacher" / f.name)
    ctx.log(
        f"  online run ({teacher}): 50 prompts, {iters} iters"
        + (" (responses from the offline run)" if p.quick else ", fresh cache")
    )
    runs["online"] = run("online", cache_on)
    off, on = runs["offline"], runs["online"]
    d: dict[str, Any] = {"iters": iters, "prompts": 50, "batch": BATCH, "runs": runs}
    # What bounds the ratio: online pays a teacher forward every step on top of the step.
    d["step_ratio_online_over_offline"] = on["step_median_s"] / off["step_median_s"]
    if not p.quick:
        return on["wall_s"] / off["wall_s"], d
    on_wall = on["wall_s"] + off["generation_s"]
    d["measured_ratio_at_quick_iters"] = on_wall / off["wall_s"]

    def at_200(r: dict[str, Any], extra: float = 0.0) -> float:
        fixed = r["wall_s"] - r["steps_total_s"] + extra
        return fixed + 200 * r["step_median_s"]

    d["offline_wall_200_projected_s"] = at_200(off)
    d["online_wall_200_projected_s"] = at_200(on, off["generation_s"])
    ratio = d["online_wall_200_projected_s"] / d["offline_wall_200_projected_s"]
    ctx.notes.append(
        f"offline_vs_online ({teacher}, quick): both modes ran {iters} iters, not 200; the "
        "figure is each run's measured fixed time (wall - steps) + 200 x its median step "
        "time. The online run reused the offline run's sampled responses and is charged "
        f"their measured generation time ({off['generation_s']:.0f} s). At {iters} iters "
        f"the measured ratio was {d['measured_ratio_at_quick_iters']:.2f}."
    )
    return ratio, d


def sec_on_policy(ctx: Context) -> None:
    """An on-policy reverse-KL step, sampling included, vs an online forward-KL step."""
    p, pair = ctx.plan, ctx.ensure_pair()
    with (
        ctx.worker(
            "bench.steps:KDStep",
            "kd-on-policy",
            mode="online",
            pair=pair,
            work=str(ctx.tmp / "kd-on-policy"),
            on_policy=True,
        ) as pol,
        ctx.worker(
            "bench.steps:KDStep", "kd-online", mode="online", pair=pair, work=str(ctx.tmp / "on")
        ) as onl,
    ):
        ctx.log("  on-policy step (student samples 4 x 224 tokens) vs online forward-KL step")
        rp, ro = _alternate(ctx, pol, onl, p.torch_rounds, p.torch_steps, p.torch_steps)
    t_p, t_o = median(_times(rp)), median(_times(ro))
    sample = median([t for r in rp for t in r["sample_s"]])
    ctx.results["on_policy_step_ratio"] = t_p / t_o
    ctx.details["on_policy"] = {
        "on_policy_step_median_s": t_p,
        "online_fkl_step_median_s": t_o,
        "sampling_median_s": sample,
        "sampled_tokens_per_s": rp[0]["response_tokens"] / sample if sample > 0 else None,
        "on_policy_steps_s": _times(rp),
        "online_fkl_steps_s": _times(ro),
        "response_tokens": rp[0]["response_tokens"],
    }


def sec_divergence(ctx: Context) -> None:
    """Each divergence's offline fused step against forward KL's, one worker, alternated."""
    p, pair = ctx.plan, ctx.ensure_pair()
    kinds = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with ctx.worker(
        "bench.steps:KDStep", "kd-divergence", mode="offline", pair=pair, work=str(ctx.tmp / "dv")
    ) as w:
        for r in range(p.sft_rounds):
            for k in kinds:
                runs[k].append(w.call("steps", n=p.sft_steps, divergence=k))
            ctx.log(
                f"  round {r + 1}/{p.sft_rounds}: "
                + ", ".join(f"{k} {median(runs[k][-1]['times']):.2f} s" for k in kinds)
            )
    med = {k: median(_times(v)) for k, v in runs.items()}
    ratios = {k: med[k] / med["forward_kl"] for k in kinds}
    ctx.results["divergence_step_ratio_max"] = max(ratios[k] for k in kinds[1:])
    ctx.details["divergence"] = {
        "step_median_s": med,
        "ratio_to_forward_kl": ratios,
        "steps_s": {k: _times(v) for k, v in runs.items()},
    }


def sec_distil(ctx: Context) -> None:
    """One domain end to end, offline vs online (the issue's teacher, then a teacher 9.4x the
    student as real pairs are); then the cache file's size and precision."""
    ratio, d = _offline_vs_online(ctx, "teacher", "")
    ctx.results["offline_vs_online_speedup"] = ratio
    ctx.details["distil"] = d
    pair, off = ctx.ensure_pair(), d["runs"]["offline"]
    ctx.log("  checking the cache file")
    with ctx.worker("bench.distil:Distil", "distil-cache") as w:
        check = w.call(
            "cache_check", pair=pair, cache=off["cache"], output=str(ctx.tmp / "out-offline")
        )
        large = w.call("large_vocab_cache", folder=str(ctx.tmp))
    ctx.results["cache_bytes_per_token"] = check["bytes_per_token"]
    ctx.details["cache"] = {
        **check,
        "fp16_loss_within_1e-3": check["kd_loss_abs_diff"] <= 1e-3,
        "vocab_151936": large,
    }
    with ctx.worker("bench.steps:Builder", "build-big") as w:
        w.call("build_big_teacher", root=pair)
    ratio_big, d_big = _offline_vs_online(ctx, "teacher-big", "-big")
    ctx.results["offline_vs_online_speedup_big_teacher"] = ratio_big
    ctx.details["distil_big_teacher"] = {"teacher": asdict(BIG_TEACHER), **d_big}


def sec_align(ctx: Context) -> None:
    """bench/align.py in its own process: alignment per step, the span loss's step cost."""
    steps = "5" if ctx.plan.quick else "20"
    cmd = [sys.executable, str(ROOT / "bench" / "align.py"), "--steps", steps]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    got = json.loads((ROOT / "bench" / "results" / "align.json").read_text())
    ctx.results["align_overhead_ratio"] = got["align_overhead_ratio"]
    ctx.details["align"] = got


def derive_mfu(ctx: Context) -> None:
    """Achieved FLOP/s of the student's offline step over numpy's measured sgemm rate."""
    sft, mm = ctx.details.get("sft"), ctx.details.get("matmul")
    if not sft or not mm:
        return
    peak = mm["sgemm_2048"]["flops_per_s"]
    flops = lora_train_flops(STUDENT, BATCH, SEQ)
    step = sft["kd_offline_step_median_s"]
    ctx.results["mfu"] = flops / step / peak
    tokens = BATCH * SEQ
    six_n = 6.0 * STUDENT.matmul_params() * tokens + 12.0 * STUDENT.layers * BATCH * SEQ**2 * (
        STUDENT.hidden
    )
    ctx.details["mfu"] = {
        "step": "kd offline KD step, student 4 x 512, vocab 8192, batch 4 x 256",
        "formula": FLOPS_FORMULA,
        "flops_per_step": flops,
        "step_s": step,
        "achieved_flops_per_s": flops / step,
        "sgemm_peak_flops_per_s": peak,
        "mfu_with_6N_convention": six_n / step / peak,
    }
    if "mfu_online" in ctx.details:
        on = ctx.details.pop("mfu_online")
        ctx.details["mfu"]["online_step_mfu"] = on["flops"] / on["step_s"] / peak
        ctx.details["mfu"]["online_step_flops"] = on["flops"]


SECTIONS: dict[str, tuple[Callable[[Context], None], tuple[str, ...]]] = {
    "matmul": (sec_matmul, ("mlx_vs_numpy_matmul_ratio",)),
    "sft": (sec_sft, ("kd_vs_sft_step_ratio",)),
    "torch": (sec_torch, ("kd_vs_torch_tokens_ratio",)),
    "distil": (
        sec_distil,
        (
            "offline_vs_online_speedup",
            "cache_bytes_per_token",
            "offline_vs_online_speedup_big_teacher",
        ),
    ),
    "large": (
        sec_large,
        ("kd_vs_mlxlm_ce_peak_memory_ratio", "kd_vs_mlxlm_ce_step_time_ratio_large_vocab"),
    ),
    "on_policy": (sec_on_policy, ("on_policy_step_ratio",)),
    "divergence": (sec_divergence, ("divergence_step_ratio_max",)),
    "align": (sec_align, ("align_overhead_ratio",)),
}
NEEDS = {"mfu": ("matmul", "sft")}


def pick_sections(only: str | None) -> list[str]:
    if not only:
        return list(SECTIONS)
    wanted: set[str] = set()
    for item in (x.strip() for x in only.split(",") if x.strip()):
        if item in SECTIONS:
            wanted.add(item)
        elif item in NEEDS:
            wanted.update(NEEDS[item])
        else:
            hits = [s for s, (_, keys) in SECTIONS.items() if item in keys]
            if not hits:
                known = sorted([*GOALS, *SECTIONS])
                raise SystemExit(f"--only: unknown key {item!r}; known: {', '.join(known)}")
            wanted.update(hits)
    return [s for s in SECTIONS if s in wanted]


def goal_text(key: str) -> str:
    op, thr = GOALS[key]
    return "-" if thr != thr else f"{op} {thr:g}"


def goal_met(key: str, value: float | None) -> bool | None:
    op, thr = GOALS[key]
    if value is None or thr != thr:
        return None
    return value >= thr if op == ">=" else value <= thr


def table(results: dict[str, Any]) -> str:
    rows = [("key", "value", "goal", "met")]
    for key in GOALS:
        v = results.get(key)
        met = goal_met(key, v)
        rows.append(
            (
                key,
                "-" if v is None else f"{v:.3g}",
                goal_text(key),
                {True: "yes", False: "NO", None: "-"}[met],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and iterations (under 10 minutes on a 2-core CPU)",
    )
    ap.add_argument(
        "--only",
        help="comma-separated result keys or sections "
        f"({', '.join(SECTIONS)}); other keys are kept from the last latest.json",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick)
    sections = pick_sections(args.only)
    out_path = RESULTS / "latest.json"
    previous: dict[str, Any] = {}
    if args.only and out_path.exists():
        try:
            previous = json.loads(out_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}

    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    ctx = Context(plan, tmp, {}, {}, machine_facts())
    started = time.perf_counter()
    errors: dict[str, str] = {}
    loads: dict[str, Any] = {}
    ctx.log(
        f"kd bench ({'quick' if plan.quick else 'full'}): {', '.join(sections)}; work folder {tmp}"
    )
    try:
        for name in sections:
            fn, _ = SECTIONS[name]
            ctx.log(f"section {name}")
            t0, load0 = time.perf_counter(), _load()
            try:
                fn(ctx)
            except Exception as e:
                errors[name] = f"{e.__class__.__name__}: {e}"
                ctx.log(f"section {name} failed:\n{traceback.format_exc()}")
            loads[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "load_average_before": load0,
                "load_average_after": _load(),
            }
        derive_mfu(ctx)
    finally:
        if args.keep:
            ctx.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    measured = {
        "mode": "quick" if plan.quick else "full",
        "sections": sections,
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    data: dict[str, Any] = {
        "schema": 1,
        "command": "python bench/run.py"
        + (" --quick" if plan.quick else "")
        + (f" --only {args.only}" if args.only else ""),
        **measured,
        "machine": {**previous.get("machine", {}), **ctx.facts},
    }
    keys = {k: previous.get(k) for k in GOALS} | {k: v for k, v in ctx.results.items()}
    data.update(keys)
    data["goals"] = {k: {"goal": goal_text(k), "met": goal_met(k, keys.get(k))} for k in GOALS}
    data["sections"] = {
        **previous.get("sections", {}),
        **{s: {**measured, **loads.get(s, {}), "error": errors.get(s)} for s in sections},
    }
    details = {**previous.get("details", {}), **ctx.details}
    data["details"] = details
    data["notes"] = ctx.notes + [
        f"{'quick' if plan.quick else 'full'} mode; sides of each ratio alternated, medians.",
        "Step figures: teacher llama 8 x 768, student 4 x 512 (LoRA rank 16, scale 2, all "
        "linears of every block), vocab 8192, batch 4 x 256, fp32, Adam; T = 2, alpha = 0.7.",
    ]
    atomic_write_json(out_path, data)
    # A copy per mode, so a quick run does not hide the last full one (and vice versa).
    atomic_write_json(RESULTS / f"{measured['mode']}.json", data)
    print(table(keys))
    print(f"\nwrote {out_path.relative_to(ROOT)} in {measured['duration_s']:.0f} s")
    if errors:
        print(
            "failed sections: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
