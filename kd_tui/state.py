"""What the dashboard is editing: the run spec (pair, domains, KDConfig) and where it lives.

Every screen reads and writes this one object (app.state); the Config screen saves it to
kd.toml. Nothing here imports MLX.

kd.toml is the user's file and the dashboard never loses what is in it: a bad value keeps the
rest of the file's values (and is kept in `bad` for the Config form to show), a save edits
the file in place with the previous version kept as kd.toml.bak, and a file that could not be
read at all is never saved over (`unreadable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from kd_core.config import CONFIG_FIELDS, ConfigError, RunSpec
from kd_core.config_file import BadSetting, load_toml_partial, save_toml

if TYPE_CHECKING:
    from textual.widget import Widget


@dataclass
class AppState:
    spec: RunSpec = field(default_factory=RunSpec)
    config_path: Path = field(default_factory=lambda: Path("kd.toml"))
    last_output: Path | None = None
    processes: int = 1  # > 1: a local data-parallel run (kd distill --distributed N)
    bad: list[BadSetting] = field(default_factory=list)  # in kd.toml, but unusable
    unreadable: str | None = None  # why kd.toml could not be read: then it is never saved
    known_outputs: list[Path] = field(default_factory=list)  # recent and --attach folders

    @classmethod
    def load(cls, config_path: Path) -> AppState:
        """Read kd.toml if it exists, keeping every good value; the bad ones go to `bad`.
        A file that cannot be read or is not TOML raises ConfigError (one line)."""
        if not config_path.is_file():
            return cls(config_path=config_path)
        spec, bad = load_toml_partial(config_path)
        return cls(spec=spec, config_path=config_path, bad=bad)

    def save(self) -> Path:
        if self.unreadable:
            raise ConfigError(f"{self.unreadable}; it is left as it is (fix it, then restart)")
        keep = {b.key for b in self.bad}  # never delete a line the dashboard could not read
        return save_toml(self.spec, self.config_path, keep=keep, backup=True)

    def bad_summary(self) -> str | None:
        """One line about the file's unusable settings (None when there are none)."""
        if not self.bad:
            return None
        more = f" (and {len(self.bad) - 1} more)" if len(self.bad) > 1 else ""
        if any(b.key in CONFIG_FIELDS for b in self.bad):
            what = "the rest was read; fix it in Config (3) before saving"
        else:
            what = "the rest was read; kept in the file as it is"
        return f"{self.config_path.name}: {self.bad[0].error}{more} — {what}"

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
