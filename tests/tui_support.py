"""Helpers for the dashboard's tests: scripted runs and waiting on conditions (no sleeps)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scripted_source import ScriptedEventSource

from kd_core.config import KDConfig
from kd_core.events import (
    CacheUsed,
    CheckpointSaved,
    DomainFinished,
    Event,
    Log,
    PhaseStarted,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    Step,
)
from kd_tui.app import KDApp

CONFIG = {"temperature": 2.0, "alpha": 0.7, "lora_rank": 16, "num_iters": 0, "steps_per_report": 5}


def result(domain: str, iters: int, output: str) -> dict[str, Any]:
    return {
        "domain": domain,
        "final_kd_loss": 0.512,
        "final_ce_loss": 2.25,
        "final_combined_loss": 1.0334,
        "training_time_seconds": 12.5,
        "adapter_path": f"{output}/{domain}",
        "steps": iters,
        "tokens": 64 * iters,
        "tokens_per_second": 400.0,
        "peak_memory_gb": 0.5,
        "stopped": False,
    }


def domain_events(domain: str, iters: int, output: str, prompts: int = 8) -> list[Event]:
    events: list[Event] = [PhaseStarted("student", domain, iters)]
    for i in range(1, iters + 1):
        kd = 2.0 * math.exp(-i / 8) + 0.3
        ce = 4.0 - 0.04 * i
        events.append(
            Step(
                domain,
                i,
                iters,
                kd,
                ce,
                0.7 * kd + 0.3 * ce,
                1e-4,
                64,
                400.0,
                0.5,
                0.5 * i,
                0.5 * (iters - i),
            )
        )
    events.append(CheckpointSaved(domain, iters, f"{output}/{domain}/checkpoint_{iters}"))
    events.append(DomainFinished(domain, result(domain, iters, output)))
    return events


def scripted_run(
    domains: Sequence[str] = ("thinking",),
    iters: int = 12,
    output: str = "/runs/out",
    finish: bool = True,
    build: bool = False,
    prompts: int = 8,
) -> list[Event]:
    """A realistic event stream: (build) → run started → teacher pass with progress and
    cache → student pass steps → checkpoint → domain finished → run finished."""
    config = KDConfig(**dict(CONFIG, num_iters=iters))
    events: list[Event] = []
    if build:
        events += [
            PhaseStarted("build", None, 3, "demo pair"),
            Progress("build", None, 1, 3, 4.0, "tokenizer"),
            Progress("build", None, 3, 3, 0.0, "models"),
        ]
    events.append(
        RunStarted(
            "demo-teacher",
            "demo-student",
            list(domains),
            config,
            output,
            iters * len(domains),
            teacher_weights="7e3a9c01b2d4f6a8c0e2",
            student_weights="51d0c8e6a4b2f0e8d6c4",
        )
    )
    for d in domains:
        events += [
            PhaseStarted("teacher", d, prompts),
            Progress("teacher", d, prompts // 2, prompts, 2.0, "generating"),
            Progress("teacher", d, prompts, prompts, 0.0, "generating"),
            CacheUsed(d, f"/cache/{d}.safetensors", False, prompts, 20 * prompts),
        ]
    events.append(Log("vocabulary: identical vocabularies"))
    for d in domains:
        events += domain_events(d, iters, output)
    if finish:
        events.append(
            RunFinished(f"{output}/kd_summary.json", [result(d, iters, output) for d in domains])
        )
    else:  # mid-run: halfway through the last domain's steps
        events = events[: -(iters // 2 + 2)]
    return events


def failing_run(error: str = "student: out of memory at step 3") -> list[Event]:
    events = scripted_run(("thinking",), iters=6, finish=False)[:-3]
    return events + [RunFailed(error, domain="thinking", step=3)]


def scripted_app(
    events: Sequence[Event],
    config_path: Path | None = None,
    resume_events: Sequence[Event] | None = None,
    **kwargs: Any,
) -> KDApp:
    factory = lambda app: ScriptedEventSource(app, events, resume_events=resume_events)
    return KDApp(config_path=config_path or Path("kd.toml"), event_source_factory=factory, **kwargs)


def text(app: Any, selector: str) -> str:
    """The rendered text of a Static found by `selector`."""
    from textual.widgets import Static

    return str(app.query_one(selector, Static).render())


async def wait_until(pilot: Any, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let the app run until `cond()` holds (fails after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await pilot.pause(0.02)


async def run_script_to_end(pilot: Any, app: KDApp) -> None:
    """Start the scripted run (t); wait until the pane has handled every scripted event."""
    await pilot.press("t")
    await wait_until(pilot, lambda: app.engine is not None and app.engine.replayed)
    await wait_until(pilot, lambda: app.train_pane.events_seen >= len(app.engine.posted))
    app.train_pane.flush(force=True)
    await pilot.pause()


async def open_config(pilot: Any, app: KDApp) -> None:
    """Show the Config tab (3) and wait until its fields exist (built on the first visit)."""
    from kd_tui.panes.config import ConfigPane

    await pilot.press("3")
    pane = app.query_one(ConfigPane)
    await wait_until(pilot, lambda: pane.ready)
    await pilot.pause()
