"""Runs on disk: find output folders, read their summary, record and metrics.jsonl.

No Textual and no MLX here: plain files, so the Runs pane can call it from a thread worker
and tests can call it directly. A run is an output folder holding kd_summary.json
(written by kd_core.distiller when a run ends) and/or `.kd-run/run.json` (written by the
run's process when it starts: kd_core/run/record.py), with one sub-folder per domain
(metrics.jsonl: one JSON row per step with step, kd, ce, combined, lr, tokens, step_time,
elapsed_s). A run still going has no summary yet: its pair and settings come from
`.kd-run/kd.toml`, its domains from the folders that hold a metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_core.run.record import CONFIG_FILE, RECORD_FILE, RUN_DIR
from kd_core.run.status import RunState, read_state

SUMMARY_FILE = "kd_summary.json"  # kd_core.distiller.SUMMARY_FILE (not imported: it loads MLX)
METRICS_FILE = "metrics.jsonl"
MAX_CHILDREN = 400  # a scan never walks a huge folder (e.g. a home directory) in full
SERIES = ("kd", "ce", "combined")


@dataclass
class DomainRun:
    name: str
    final_kd: float | None
    final_ce: float | None
    final_combined: float | None
    steps: int
    metrics_path: Path
    adapter_path: Path


@dataclass
class RunInfo:
    path: Path  # the output folder
    updated: str  # ISO time from the summary ("" if absent)
    teacher: str
    student: str
    config: dict[str, Any] = field(default_factory=dict)
    domains: list[DomainRun] = field(default_factory=list)
    status: RunState | None = None  # from .kd-run/ (None: a run from before records)
    # kd_core/models/identity.py weights fingerprints; None: a run from before they were recorded
    teacher_weights: str | None = None
    student_weights: str | None = None

    @property
    def state(self) -> str:
        """running / paused / finished / stopped / failed / crashed ("" if unknown)."""
        return self.status.state if self.status else ""

    @property
    def live(self) -> bool:
        return bool(self.status and self.status.live)

    @property
    def pair(self) -> str:
        teacher = named_model(self.teacher, self.teacher_weights)
        return f"{teacher} → {named_model(self.student, self.student_weights)}"

    @property
    def date(self) -> str:
        return self.updated.replace("T", " ")[:16] if self.updated else "?"


def named_model(path: str, weights: str | None) -> str:
    """A model as the Runs table names it: short path and the start of its fingerprint."""
    return f"{short_model(path)} ({weights[:7]})" if weights else short_model(path)


def short_model(path: str) -> str:
    """The last meaningful part of a model path (HF cache snapshots end in a hash)."""
    parts = [p for p in Path(path).parts if p]
    if len(parts) >= 3 and parts[-2] == "snapshots":  # .../models--owner--name/snapshots/<sha>
        return parts[-3].removeprefix("models--").replace("--", "/")
    return parts[-1] if parts else path


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_run(folder: Path) -> RunInfo | None:
    """A run from its output folder (its summary, else its record), or None if neither is
    there and readable."""
    status = read_state(folder) if (folder / RUN_DIR / RECORD_FILE).is_file() else None
    try:
        data = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or (status is not None and status.live):
        # No summary yet (or the one of an earlier run in a folder now taken by a live one).
        return _run_from_record(folder, status) if status is not None else None
    run = _run_from_summary(folder, data)
    run.status = status
    return run


def _run_from_record(folder: Path, status: RunState) -> RunInfo:
    try:
        spec = tomllib.loads((folder / RUN_DIR / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        spec = {}
    config = {k: v for k, v in spec.items() if k not in ("teacher", "student", "domains")}
    run = RunInfo(
        folder,
        status.record.started,
        str(spec.get("teacher") or "?"),
        str(spec.get("student") or "?"),
        config,
        status=status,
    )
    if status.pair is not None:
        run.teacher_weights = status.pair.teacher_weights
        run.student_weights = status.pair.student_weights
    try:
        names = sorted(c.name for c in folder.iterdir() if (c / METRICS_FILE).is_file())
    except OSError:
        names = []
    for name in names:
        metrics = folder / name / METRICS_FILE
        steps = len(read_metrics(metrics))
        run.domains.append(DomainRun(name, None, None, None, steps, metrics, folder / name))
    return run


def _run_from_summary(folder: Path, data: dict[str, Any]) -> RunInfo:
    run = RunInfo(
        folder,
        str(data.get("updated", "")),
        str(data.get("teacher", "?")),
        str(data.get("student", "?")),
        data.get("config") or {},
        teacher_weights=_text(data.get("teacher_weights")),
        student_weights=_text(data.get("student_weights")),
    )
    domains = data.get("domains") or {}
    if not isinstance(domains, dict):
        return run
    for name, r in domains.items():
        r = r if isinstance(r, dict) else {}
        # Paths in the summary are where the run wrote them; if the folder moved, look beside.
        # A hand-edited summary may hold anything: only strings count as paths.
        if not isinstance(r.get("metrics_path"), str):
            r = {**r, "metrics_path": None}
        if not isinstance(r.get("adapter_path"), str):
            r = {**r, "adapter_path": None}
        metrics = Path(r.get("metrics_path") or folder / name / METRICS_FILE)
        if not metrics.is_file():
            metrics = folder / name / METRICS_FILE
        adapter = Path(r.get("adapter_path") or folder / name)
        if not adapter.is_dir():
            adapter = folder / name
        steps = _float(r.get("steps"))
        run.domains.append(
            DomainRun(
                str(name),
                _float(r.get("final_kd_loss")),
                _float(r.get("final_ce_loss")),
                _float(r.get("final_combined_loss")),
                int(steps or 0),
                metrics,
                adapter,
            )
        )
    return run


def candidate_folders(output: Path, extra: list[Path] | None = None) -> list[Path]:
    """Where to look: the output folder, its parent and siblings, each extra folder and its
    children (one level: runs sit directly in these)."""
    seen: dict[Path, None] = {}

    def add(p: Path) -> None:
        with contextlib.suppress(OSError):
            seen.setdefault(p.expanduser().resolve(), None)

    def add_with_children(p: Path) -> None:
        add(p)
        try:
            children = sorted(c for c in p.expanduser().iterdir() if c.is_dir())
        except OSError:
            return
        for c in children[:MAX_CHILDREN]:
            add(c)

    add(output)
    add_with_children(output.expanduser().absolute().parent)
    for p in extra or []:
        add_with_children(p)
    return list(seen)


def is_run_folder(folder: Path) -> bool:
    return (folder / SUMMARY_FILE).is_file() or (folder / RUN_DIR / RECORD_FILE).is_file()


def find_runs(
    output: Path, extra: list[Path] | None = None, known: list[Path] | None = None
) -> list[RunInfo]:
    """Every run found, newest first: under the output folder and `extra` (see
    candidate_folders), and in each `known` folder itself (recent and --attach folders)."""
    folders = candidate_folders(output, extra)
    for p in known or []:
        with contextlib.suppress(OSError):
            p = p.expanduser().resolve()
            if p not in folders:
                folders.append(p)
    runs = []
    for folder in folders:
        if is_run_folder(folder):
            run = read_run(folder)
            if run is not None:
                runs.append(run)
    runs.sort(key=lambda r: (r.updated, str(r.path)), reverse=True)
    return runs


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a half-written last line (a live run) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, skipping rows without a finite value."""
    xs, ys = [], []
    for r in rows:
        v = _float(r.get(key))
        s = _float(r.get("step"))
        if v is not None and s is not None:
            xs.append(s)
            ys.append(v)
    return xs, ys


def downsample(xs: list[float], ys: list[float], width: int) -> tuple[list[float], list[float]]:
    """At most `width` points: the mean of each bucket (keeps the trend, hides step noise),
    the last point kept exactly so the curve ends at the final value."""
    n = len(xs)
    width = max(2, width)
    if n <= width:
        return list(xs), list(ys)
    out_x, out_y = [], []
    for b in range(width - 1):
        lo, hi = b * (n - 1) // (width - 1), (b + 1) * (n - 1) // (width - 1)
        hi = max(hi, lo + 1)
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


def final_losses(
    domain: DomainRun, rows: list[dict[str, Any]] | None = None
) -> dict[str, float | None]:
    """Final KD / CE / combined: the summary's, or the mean of the last 10 metric rows."""
    out: dict[str, float | None] = {
        "kd": domain.final_kd,
        "ce": domain.final_ce,
        "combined": domain.final_combined,
    }
    if all(v is not None for v in out.values()):
        return out
    rows = read_metrics(domain.metrics_path) if rows is None else rows
    tail = rows[-10:]
    for key in SERIES:
        if out[key] is None:
            vals = [v for r in tail if (v := _float(r.get(key))) is not None]
            out[key] = sum(vals) / len(vals) if vals else None
    return out
