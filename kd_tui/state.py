"""What the dashboard is editing: the run spec (pair, domains, KDConfig) and where it lives.

Every screen reads and writes this one object (app.state); the Config screen saves it to
kd.toml. Nothing here imports MLX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from kd_core.config import RunSpec, load_toml, save_toml

if TYPE_CHECKING:
    from textual.widget import Widget


@dataclass
class AppState:
    spec: RunSpec = field(default_factory=RunSpec)
    config_path: Path = field(default_factory=lambda: Path("kd.toml"))
    last_output: Path | None = None
    processes: int = 1  # > 1: a local data-parallel run (kd distill --distributed N)

    @classmethod
    def load(cls, config_path: Path) -> AppState:
        """Read kd.toml if it exists (errors propagate as ConfigError, one line)."""
        spec = load_toml(config_path) if config_path.is_file() else RunSpec()
        return cls(spec=spec, config_path=config_path)

    def save(self) -> Path:
        return save_toml(self.spec, self.config_path)

    @property
    def teacher_name(self) -> str:
        return self.spec.teacher or "demo-teacher"

    @property
    def student_name(self) -> str:
        return self.spec.student or "demo-student"


class _HasState(Protocol):
    state: AppState


def app_state(widget: Widget) -> AppState:
    """The dashboard's shared state, from any widget mounted in it: the one typed way the
    panes reach the app (they cannot import KDApp, which imports them)."""
    return cast(_HasState, widget.app).state
