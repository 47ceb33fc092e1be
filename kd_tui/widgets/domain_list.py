"""The domains of the run: ✓ done (final loss), ▶ running, · waiting."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kd_core.events import fmt_loss
from kd_tui.run_view import DomainStatus
from kd_tui.widgets import set_text

MARKS = {
    "waiting": ("·", "dim"),
    "teacher": ("▶", "bold"),
    "cached": ("·", ""),
    "training": ("▶", "bold"),
    "done": ("✓", "green"),
    "stopped": ("■", "yellow"),
    "failed": ("✗", "red"),
}


def domain_line(d: DomainStatus, width: int = 12) -> Text:
    mark, style = MARKS.get(d.state, ("·", ""))
    line = Text(f"{mark} ", style=style)
    line.append(f"{d.name:<{width}}", style="bold" if d.state in ("teacher", "training") else "")
    if d.state == "done" or (d.state == "stopped" and d.final_loss is not None):
        line.append(f" {fmt_loss(d.final_loss)}")
    elif d.state == "training" and d.total:
        line.append(f" {d.step}/{d.total}", style="dim")
    elif d.state == "teacher":
        line.append(" teacher…", style="dim")
    elif d.state == "cached":
        line.append(" ready", style="dim")
    return line


class DomainList(Static):
    def on_mount(self) -> None:
        self.border_title = "Domains"

    def show(self, domains: list[DomainStatus]) -> None:
        if not domains:
            set_text(self, Text("all built-in domains", style="dim"))
            return
        width = max(8, min(14, max(len(d.name) for d in domains)))
        set_text(self, Text("\n").join(domain_line(d, width) for d in domains))
