"""RunView: what the Train pane shows, built from engine events (no Textual here).

Applying an event is O(1) and touches no widget: the pane redraws from this model on a
timer a few times a second, so a trainer that reports hundreds of steps a second costs the
UI almost nothing (docs/ARCHITECTURE.md: never replot per event).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kd_core.events import (
    CacheUsed,
    DomainFinished,
    DomainResult,
    Event,
    Paused,
    PhaseStarted,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    Step,
    describe,
    fmt_loss,
    fmt_time,
)

SERIES = ("kd", "ce", "combined")
PLOT_MODES = ("all", "kd", "ce", "combined")
# The plot's smoothing weights, cycled by a key: raw, then TensorBoard's default and heavier.
SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.97)
MAX_SMOOTHING = 0.999


def ema(values: Sequence[float], weight: float, counts: Sequence[int] | None = None) -> list[float]:
    """Debiased exponential moving average, as TensorBoard and W&B smooth a curve.

    weight 0 returns the values; 0.99 is very smooth. Debiasing divides by (1 - weight^n)
    so the first points are not pulled towards 0 (a plain EMA starting at 0 would be).
    `counts[i]` is how many steps point i stands for (LossSeries merges neighbours on long
    runs): such a point decays the average by weight^count, as that many equal steps would,
    so the smoothing per *step* stays the same after merging. Non-finite values are passed
    through and not averaged in (one NaN step must not blank the rest of the curve). O(n).
    """
    w = min(max(float(weight), 0.0), MAX_SMOOTHING)
    if w == 0.0:
        return [float(v) for v in values]
    out: list[float] = []
    last, decay = 0.0, 1.0  # decay: the product of the weights so far (weight^steps)
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out.append(float(v))
            continue
        d = w ** (counts[i] if counts is not None else 1)
        last = last * d + (1.0 - d) * v
        decay *= d
        out.append(last / (1.0 - decay))
    return out


@dataclass
class Segment:
    """One domain's stretch of the curves, ready to plot: downsampled x, the raw values and,
    when smoothing is on, the smoothed ones (None when off)."""

    x: list[float]
    raw: dict[str, list[float]]
    smooth: dict[str, list[float]] | None


def bucket_means(
    x: Sequence[float], columns: dict[str, Sequence[float]], width: int
) -> tuple[list[float], dict[str, list[float]]]:
    """At most `width` points: means over equal buckets of consecutive points. O(n)."""
    n = len(x)
    width = max(1, width)
    if n <= width:
        return list(x), {s: list(c) for s, c in columns.items()}
    xs: list[float] = []
    out: dict[str, list[float]] = {s: [] for s in columns}
    for b in range(width):
        lo, hi = b * n // width, (b + 1) * n // width
        if hi <= lo:
            continue
        xs.append(sum(x[lo:hi]) / (hi - lo))
        for s, column in columns.items():
            out[s].append(sum(column[lo:hi]) / (hi - lo))
    return xs, out


class LossSeries:
    """The loss curves, x = step over the whole run (domain offset + step).

    Memory and redraw cost stay bounded on long runs: beyond `max_points` stored points,
    neighbours are merged pairwise and each stored point then stands for more steps (its
    values are the means); the newest point absorbs new steps until it is full.
    """

    def __init__(self, max_points: int = 2048) -> None:
        self.max_points = max(16, max_points)
        self.x: list[float] = []
        self.kd: list[float] = []
        self.ce: list[float] = []
        self.combined: list[float] = []
        self._weight: list[int] = []  # steps per stored point
        self._last_x: list[int] = []  # the last step in each stored point
        self.stride = 1  # steps a full stored point holds
        self.steps = 0  # steps held in all
        self.version = 0

    def __len__(self) -> int:
        return self.steps

    def _columns(self) -> tuple[list[float], ...]:
        return self.x, self.kd, self.ce, self.combined

    def add(self, x: int, kd: float, ce: float, combined: float) -> None:
        # A resumed run repeats the steps after its checkpoint: drop the old copies.
        while self._last_x and self._last_x[-1] >= x:
            for column in self._columns():
                column.pop()
            self._last_x.pop()
            self.steps -= self._weight.pop()
        if self._weight and self._weight[-1] < self.stride:
            w = self._weight[-1]
            for column, value in zip(self._columns(), (x, kd, ce, combined), strict=True):
                column[-1] = (column[-1] * w + value) / (w + 1)
            self._weight[-1] = w + 1
            self._last_x[-1] = x
        else:
            for column, value in zip(self._columns(), (x, kd, ce, combined), strict=True):
                column.append(float(value))
            self._weight.append(1)
            self._last_x.append(x)
        self.steps += 1
        if len(self.x) > self.max_points:
            self._halve()
        self.version += 1

    def _halve(self) -> None:
        """Merge neighbours pairwise (weighted means): half the points, twice the stride."""
        n = len(self.x) - len(self.x) % 2
        merged: list[list[float]] = [[] for _ in range(4)]
        weights: list[int] = []
        last_x: list[int] = []
        for i in range(0, n, 2):
            w1, w2 = self._weight[i], self._weight[i + 1]
            for out, column in zip(merged, self._columns(), strict=True):
                out.append((column[i] * w1 + column[i + 1] * w2) / (w1 + w2))
            weights.append(w1 + w2)
            last_x.append(self._last_x[i + 1])
        if n < len(self.x):  # an odd point out stays as it is
            for out, column in zip(merged, self._columns(), strict=True):
                out.append(column[-1])
            weights.append(self._weight[-1])
            last_x.append(self._last_x[-1])
        self.x, self.kd, self.ce, self.combined = merged
        self._weight, self._last_x = weights, last_x
        self.stride *= 2

    def clear(self) -> None:
        for column in self._columns():
            column.clear()
        self._weight.clear()
        self._last_x.clear()
        self.stride, self.steps = 1, 0
        self.version += 1

    def values(self, name: str) -> list[float]:
        return getattr(self, name)

    def downsample(self, width: int) -> tuple[list[float], dict[str, list[float]]]:
        """At most `width` points per series: means over equal buckets of steps (a plot
        cannot show more points than it has columns, and plotext's cost grows with them)."""
        return bucket_means(self.x, {s: self.values(s) for s in SERIES}, width)

    def segments(
        self,
        width: int,
        boundaries: Sequence[int] = (),
        smoothing: float = 0.0,
        series: Sequence[str] = SERIES,
    ) -> list[Segment]:
        """The curves cut at the domain boundaries (x offsets where a domain starts: its
        points have x > boundary), each smoothed on its own (the EMA restarts per domain)
        and then downsampled to its share of `width` points. Smoothing comes before the
        downsampling, on the stored points: O(n) in all, whatever the smoothing."""
        n = len(self.x)
        if not n:
            return []
        cuts = sorted(set(boundaries))
        ranges: list[tuple[int, int]] = []
        lo, part = 0, bisect_left(cuts, self.x[0])
        for i in range(1, n):
            p = bisect_left(cuts, self.x[i])  # how many boundaries lie below x
            if p != part:
                ranges.append((lo, i))
                lo, part = i, p
        ranges.append((lo, n))
        out: list[Segment] = []
        for lo, hi in ranges:
            share = max(1, round(width * (hi - lo) / n))
            raw = {s: self.values(s)[lo:hi] for s in series}
            x = self.x[lo:hi]
            xs, raw_down = bucket_means(x, raw, share)
            smooth = None
            if smoothing > 0:
                counts = self._weight[lo:hi]
                smoothed = {s: ema(v, smoothing, counts) for s, v in raw.items()}
                smooth = bucket_means(x, smoothed, share)[1]
            out.append(Segment(xs, raw_down, smooth))
        return out

    def trend(self, name: str, window: int = 10, since_x: int = 0) -> float | None:
        """Mean of the last `window` points minus the mean of the `window` before them,
        over points with x > since_x (the current domain: each domain starts afresh)."""
        values = self.values(name)
        start = len(self.x)
        while start > 0 and self.x[start - 1] > since_x:
            start -= 1
        values = values[start:]
        w = min(window, len(values) // 2)
        if w < 1:
            return None
        recent = values[-w:]
        before = values[-2 * w : -w]
        return sum(recent) / w - sum(before) / w


@dataclass
class DomainStatus:
    name: str
    state: str = "waiting"  # waiting | teacher | cached | training | done | stopped | failed
    step: int = 0
    total: int = 0
    final_loss: float | None = None
    adapter_path: str | None = None


@dataclass
class LogLine:
    text: str
    level: str = "info"  # info | dim | warning | error | success


class RunView:
    """The state of the current (or last) run as the dashboard shows it."""

    def __init__(self) -> None:
        self.reset()

    def reset(
        self,
        domains: list[str] | None = None,
        config: dict[str, Any] | None = None,
        keep_series: bool = False,
    ) -> None:
        self.status = "idle"  # idle | running | finished | stopped | failed
        self.phase = "idle"
        self.phase_message = ""
        self.domain: str | None = None
        self.domains: dict[str, DomainStatus] = {d: DomainStatus(d) for d in domains or []}
        self.phase_done = 0
        self.phase_total = 0
        self.phase_eta: float | None = None
        self.total_steps = 0
        self.steps_done = 0
        self.num_iters = int((config or {}).get("num_iters") or 0)
        self.config: dict[str, Any] = dict(config or {})
        self.last_step: Step | None = None
        self.first_step_in_domain: int | None = None
        if not keep_series or not hasattr(self, "series"):
            self.series = LossSeries()
            self.boundaries: list[int] = []
        self.results: list[DomainResult] = []
        self.summary_path = ""
        self.error: str | None = None
        self.paused = False
        self.teacher = ""
        self.student = ""
        self.output = ""
        self.version = getattr(self, "version", 0) + 1

    # ---- derived figures ----------------------------------------------------------------
    @property
    def domain_index(self) -> int:
        names = list(self.domains)
        return names.index(self.domain) + 1 if self.domain in names else 0

    @property
    def overall_eta(self) -> float | None:
        s = self.last_step
        if s is None or self.first_step_in_domain is None:
            return None
        steps_here = s.step - self.first_step_in_domain + 1
        if steps_here <= 0 or s.elapsed_s <= 0:
            return s.eta_s
        per_step = s.elapsed_s / steps_here
        return max(0.0, (self.total_steps - self.steps_done) * per_step)

    @property
    def domain_start_x(self) -> int:
        """x of the current domain's first step minus one (where its curve starts)."""
        return self._offset(self.domain) if self.domain else 0

    # ---- events -------------------------------------------------------------------------
    def apply(self, e: Event) -> LogLine | None:
        """Update the model; return a line for the log (None: nothing worth logging).
        The words are kd_core's `describe` (the CLI prints the same); steps go to the plot
        and the Now panel, not the log (a log line costs the UI a layout pass), and progress
        only when a phase's work completes."""
        self.version += 1
        handler = getattr(self, "_on_" + e.kind, None)
        if handler is not None:
            handler(e)
        if isinstance(e, Step) or (isinstance(e, Progress) and not e.done >= e.total > 0):
            return None
        d = describe(e)
        return LogLine(d.text, d.level) if d else None

    def _domain(self, name: str | None) -> DomainStatus | None:
        if name is None:
            return None
        if name not in self.domains:
            self.domains[name] = DomainStatus(name)
        return self.domains[name]

    def _on_run_started(self, e: RunStarted) -> None:
        known = {d: self.domains[d] for d in e.domains if d in self.domains}
        self.domains = {d: known.get(d) or DomainStatus(d) for d in e.domains}
        self.status = "running"
        self.config = e.config.to_dict()
        self.num_iters = e.config.num_iters
        self.total_steps = e.total_steps
        self.teacher, self.student, self.output = e.teacher, e.student, e.output

    def _on_phase_started(self, e: PhaseStarted) -> None:
        if self.status == "idle":
            self.status = "running"
        self.phase = e.phase
        self.phase_message = e.message
        self.domain = e.domain if e.domain is not None else self.domain
        self.phase_done, self.phase_total, self.phase_eta = 0, e.total, None
        d = self._domain(e.domain)
        if e.phase == "teacher" and d is not None:
            d.state = "teacher"
        if e.phase == "student" and d is not None:
            d.state, d.total, d.step = "training", e.total, 0
            self.first_step_in_domain = None
            offset = self._offset(e.domain)
            if offset not in self.boundaries and offset > 0:
                self.boundaries.append(offset)

    def _on_progress(self, e: Progress) -> None:
        self.phase = e.phase  # progress always belongs to the phase it names
        if e.domain is not None:
            self.domain = e.domain
        self.phase_done, self.phase_total, self.phase_eta = e.done, e.total, e.eta_s
        self.phase_message = e.message

    def _on_cache(self, e: CacheUsed) -> None:
        d = self._domain(e.domain)
        if d is not None:
            d.state = "cached"

    def _offset(self, domain: str | None) -> int:
        names = list(self.domains)
        index = names.index(domain) if domain in names else 0
        return index * self.num_iters

    def _on_step(self, e: Step) -> None:
        if not self.num_iters:
            self.num_iters = e.total_steps
        if self.phase != "student" or self.domain != e.domain:
            self.phase, self.domain = "student", e.domain
        if self.first_step_in_domain is None:
            self.first_step_in_domain = e.step
        x = self._offset(e.domain) + e.step
        self.series.add(x, e.kd, e.ce, e.combined)
        self.last_step = e
        self.steps_done = x
        self.total_steps = max(self.total_steps, x)
        self.phase_done, self.phase_total, self.phase_eta = e.step, e.total_steps, e.eta_s
        d = self._domain(e.domain)
        if d is not None:
            d.state, d.step, d.total = "training", e.step, e.total_steps

    def _on_domain_finished(self, e: DomainFinished) -> None:
        r = e.result
        d = self._domain(e.domain)
        if d is not None:
            d.state = "stopped" if r.stopped else "done"
            d.final_loss = r.final_combined_loss
            d.adapter_path = r.adapter_path
        self.results = [x for x in self.results if x.domain != e.domain] + [r]

    def _on_run_finished(self, e: RunFinished) -> None:
        if e.results:
            self.results = list(e.results)
        self.summary_path = e.summary_path
        self.paused = False
        self.status = "stopped" if e.stopped else "finished"
        for d in self.domains.values():
            if d.state in ("training", "teacher", "cached") and e.stopped:
                d.state = "stopped"

    def _on_run_failed(self, e: RunFailed) -> None:
        self.status = "failed"
        self.paused = False
        self.error = e.error
        d = self._domain(e.domain) or self.domains.get(self.domain or "")
        if d is not None and d.state not in ("done",):
            d.state = "failed"

    def _on_paused(self, e: Paused) -> None:
        self.paused = e.paused

    # ---- summary ------------------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """The finished run in a few lines: losses per domain, time, adapter paths."""
        if not self.results:
            return ["no domain finished"]
        total = sum(float(r.training_time_seconds or 0) for r in self.results)
        lines = []
        for r in self.results:
            mark = "■" if r.stopped else "✓"
            lines.append(
                f"{mark} {r.domain:<12} kd {fmt_loss(r.final_kd_loss)}"
                f" · ce {fmt_loss(r.final_ce_loss)} · loss "
                f"{fmt_loss(r.final_combined_loss)} · {r.steps} "
                f"steps · {fmt_time(r.training_time_seconds)} → "
                f"{r.adapter_path}"
            )
        lines.append(
            f"training time {fmt_time(total)}"
            + (f" · summary {self.summary_path}" if self.summary_path else "")
        )
        return lines
