"""The "Now" panel: the latest step's figures with their trend, and the run's T · α · rank."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Label

from kd_core.events import Step, fmt_loss
from kd_tui.run_view import LossSeries
from kd_tui.widgets import set_text

ROWS = (
    ("kd", "KD", "series-kd"),
    ("ce", "CE", "series-ce"),
    ("combined", "combined", "series-combined"),
    ("lr", "lr", ""),
    ("tps", "tokens/s", ""),
    ("mem", "peak mem", ""),
    ("step", "step", ""),
)


def trend_text(delta: float | None) -> str:
    """'↓ 0.04' when the loss falls (good), '↑ 0.04' when it rises, '' when unknown."""
    if delta is None:
        return ""
    if abs(delta) < 5e-4:
        return "→ 0.000"
    return f"{'↓' if delta < 0 else '↑'} {abs(delta):.3f}"


class NowPanel(Grid):
    """Two columns of labels; updated by the pane's timer, never per event."""

    def compose(self) -> ComposeResult:
        for key, name, cls in ROWS:
            yield Label(name, classes=f"now-name {cls}".strip())
            yield Label("—", id=f"now-{key}", classes="now-value")
        yield Label("", id="now-hyper", classes="now-hyper")

    def on_mount(self) -> None:
        self.border_title = "Now"

    def show(
        self,
        step: Step | None,
        series: LossSeries,
        config: dict[str, Any],
        paused: bool = False,
        since_x: int = 0,
    ) -> None:
        def put(key: str, text: str) -> None:
            set_text(self.query_one(f"#now-{key}", Label), text)

        if step is None:
            for key, *_ in ROWS:
                put(key, "—")
        else:
            for key in ("kd", "ce", "combined"):
                value = getattr(step, key)
                trend = trend_text(series.trend(key, since_x=since_x))
                put(key, f"{fmt_loss(value):>7}  {trend}")
            put("lr", f"{step.lr:.1e}")
            # On an on-policy step the student first samples its answers
            # (kd_core/train/on_policy.py).
            sampling = (
                f" · sampled {step.sample_tokens_per_second:,.0f}/s" if step.on_policy else ""
            )
            # A remote teacher scores the step's answers first (kd_core/remote/step_targets.py).
            remote = (
                f" · remote teacher {step.teacher_tokens_per_second:,.0f}/s"
                if step.teacher_tokens_per_second
                else ""
            )
            put("tps", f"{step.tokens_per_second:,.0f}{sampling}{remote}")
            put("mem", f"{step.peak_memory_gb:.2f} GB")
            put("step", f"{step.step}/{step.total_steps}" + ("  ⏸" if paused else ""))
        put("hyper", hyper_text(config))


def hyper_text(config: dict[str, Any]) -> str:
    if not config:
        return ""
    text = (
        f"T {config.get('temperature', 0):g} · α {config.get('alpha', 0):g} · "
        f"r {config.get('lora_rank', 0)}"
    )
    divergence = config.get("divergence", "forward_kl")
    if divergence != "forward_kl":
        text += f" · {divergence}"
    if config.get("on_policy_ratio", 0):
        text += f" · on-policy {config['on_policy_ratio']:g}"
    return text
