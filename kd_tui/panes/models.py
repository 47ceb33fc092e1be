"""Models pane: pick the teacher and the student, see what they are and whether they fit.

Keys: type a folder, a Hugging Face id (local cache) or demo-teacher / demo-student /
demo-student-sp in a box (→ accepts the grey completion) and press enter; or move into the
list below it and press enter on a model. Tab moves between the two columns. A teacher may be a
server's address (http://host:port, `kd serve-teacher`): the pane shows the model, vocabulary
and round-trip latency it reports, and compares its tokenizer (sent by the server) as any.

Checks read files only (config.json, safetensors headers) in a thread worker; comparing
the two tokenizers runs in a short child process (kd_tui.inference.tokenizer_verdict):
importing mlx_lm in a thread of this process made it abort at exit. The Tokenizers box says
which vocabulary strategy kd_core.vocab.plan.plan_vocab_alignment picks for the pair under the
configured vocab_strategy and, once a run of this pair has measured it, how much of the
responses the alignment covered (kd_summary.json's vocab_alignment, per domain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from kd_core.data_files.domain import domain_name
from kd_core.models.load import DEMO_NAMES, list_cached_models
from kd_tui.data_preview import PREVIEW_FIELDS, cached_preview
from kd_tui.inference import tokenizer_verdict
from kd_tui.messages import RunCompleted, StateChanged
from kd_tui.model_check import (
    DEMO_TRAIN_TIME,
    MeasuredAlignment,
    ModelCheck,
    check_model,
    coverage_words,
    info_lines,
    measured_alignment,
    verdict_words,
)
from kd_tui.panes.data_domain import describe_data
from kd_tui.panes.paths import PathSuggester
from kd_tui.state import app_state

ROLES = ("teacher", "student")


class ModelColumn(Vertical):
    """One role: the name box, its one-line error, the quick-pick list and the model's facts."""

    def __init__(self, role: str) -> None:
        super().__init__(id=f"{role}-col", classes="model-col")
        self.role = role
        self.good: ModelCheck | None = None  # the last model that checked out
        self.suggester = PathSuggester(extra=DEMO_NAMES)

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder=f"{self.role}: folder, Hugging Face id or demo-{self.role}"
            + (" (or http://host:port: a remote teacher)" if self.role == "teacher" else ""),
            id=f"{self.role}-input",
            suggester=self.suggester,
        )
        yield Static("", id=f"{self.role}-error", classes="model-error")
        yield OptionList(id=f"{self.role}-choices", classes="model-choices")
        yield Static("", id=f"{self.role}-info", classes="model-info")

    def on_mount(self) -> None:
        self.border_title = self.role.capitalize()
        self.set_choices([])

    def set_choices(self, cached: list[str]) -> None:
        self.suggester.extra = list(DEMO_NAMES) + cached
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(f"{n}  (built-in demo)", id=n) for n in DEMO_NAMES])
        options.add_options([Option(f"{n}  (Hugging Face cache)", id=n) for n in cached])

    def show(self, check: ModelCheck) -> None:
        """A good check replaces the facts shown; a bad one only adds its one-line error (the
        run keeps the last good model)."""
        err = self.query_one(f"#{self.role}-error", Static)
        err.update(check.error or "")
        err.set_class(bool(check.error), "-shown")
        if not check.error:
            self.good = check
        self._render_info()

    def _render_info(self) -> None:
        info = self.query_one(f"#{self.role}-info", Static)
        if self.good is None:
            info.update(Text("no model chosen yet", style="dim"))
            return
        text = Text()
        for label, value in info_lines(self.good):
            text.append(f"{label:<13}", style="bold")
            text.append(f"{value}\n")
        info.update(text.rstrip() or text)

    def checking(self, name: str) -> None:
        self.query_one(f"#{self.role}-info", Static).update(Text(f"checking {name} …", style="dim"))


class ModelsPane(Container):
    DEFAULT_CSS = """
    ModelsPane { layout: vertical; }
    ModelsPane #models-cols { height: 1fr; }
    ModelsPane .model-col { width: 1fr; border: round $primary-darken-2; padding: 0 1; }
    ModelsPane .model-col:focus-within { border: round $accent; }
    ModelsPane .model-error { height: auto; color: $error; display: none; }
    ModelsPane .model-error.-shown { display: block; }
    ModelsPane .model-choices { height: 7; margin: 1 0; }
    ModelsPane .model-info { height: auto; }
    ModelsPane #models-tokenizers { height: auto; min-height: 4;
                                    border: round $primary-darken-2; padding: 0 1; }
    ModelsPane #models-verdict { height: auto; }
    ModelsPane #models-coverage { height: auto; display: none; }
    ModelsPane #models-coverage.-shown { display: block; }
    ModelsPane #models-data { height: auto; margin-top: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._verdict_key: tuple[str, str, str] | None = None
        self._data_key: str | None = None  # the data preview shown (kd_tui/data_preview.py)
        self._seq = dict.fromkeys(ROLES, 0)  # latest check per role; older results are dropped

    def compose(self) -> ComposeResult:
        with Horizontal(id="models-cols"):
            for role in ROLES:
                yield ModelColumn(role)
        with Vertical(id="models-tokenizers"):
            yield Static("", id="models-verdict")
            yield Static("", id="models-coverage")
            yield Static("", id="models-data")

    def on_mount(self) -> None:
        self.query_one("#models-tokenizers").border_title = "Tokenizers"
        self._load_cached()
        self._from_state()
        self._update_data()

    def column(self, role: str) -> ModelColumn:
        return self.query_one(f"#{role}-col", ModelColumn)

    def _names(self) -> dict[str, str]:
        state = app_state(self)
        return {"teacher": state.teacher_name, "student": state.student_name}

    def _from_state(self) -> None:
        for role, name in self._names().items():
            col = self.column(role)
            if col.good is None or col.good.name != name:
                self.query_one(f"#{role}-input", Input).value = name
                self.choose(role, name, save=False)

    @work(thread=True, group="cached-models", exit_on_error=False)
    def _load_cached(self) -> None:
        cached = list_cached_models()  # scans the local HF cache only: no network
        self.app.call_from_thread(self._set_cached, cached)

    def _set_cached(self, cached: list[str]) -> None:
        for role in ROLES:
            self.column(role).set_choices(cached)

    # ---- picking ----------------------------------------------------------------------------
    @on(Input.Submitted, ".model-col Input")
    def _submitted(self, event: Input.Submitted) -> None:
        role = event.input.id.removesuffix("-input")  # type: ignore[union-attr]
        self.choose(role, event.value)

    @on(OptionList.OptionSelected, ".model-choices")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        role = event.option_list.id.removesuffix("-choices")  # type: ignore[union-attr]
        name = event.option.id or ""
        self.query_one(f"#{role}-input", Input).value = name
        self.choose(role, name)

    def choose(self, role: str, name: str, save: bool = True) -> None:
        self._seq[role] += 1
        self.column(role).checking(name.strip())
        spec = app_state(self).spec  # read here: the worker must not touch the app's state
        remote = (spec.config.teacher_api, spec.teacher_tokenizer)
        self._check(role, name.strip(), save, self._seq[role], remote)

    @work(thread=True, group="model-check", exit_on_error=False)
    def _check(
        self, role: str, name: str, save: bool, seq: int, remote: tuple[str, str | None]
    ) -> None:
        # File reads only (never builds the demo pair); a server's address is reached here,
        # in the worker, with short timeouts: a slow server never holds up the screen.
        result = check_model(name, role, *remote)
        self.app.call_from_thread(self._checked, role, result, save, seq)

    def _checked(self, role: str, check: ModelCheck, save: bool, seq: int) -> None:
        if seq != self._seq[role]:
            return  # the user picked another model meanwhile
        self.column(role).show(check)
        if check.error:
            return
        state = app_state(self)
        if save and getattr(state.spec, role) != check.name:
            setattr(state.spec, role, check.name)
            self.post_message(StateChanged("models"))
        self._update_verdict()

    # ---- the pair's tokenizers ----------------------------------------------------------------
    def _update_verdict(self) -> None:
        box = self.query_one("#models-verdict", Static)
        t, s = self.column("teacher").good, self.column("student").good
        if t is None or s is None:
            return
        self._update_coverage()
        if t.path is None or s.path is None:
            self._verdict_key = None
            box.update(
                "Known once the demo pair is built (no usable shipped copy here: first use "
                f"trains it, {DEMO_TRAIN_TIME}; `kd demo` builds it now)."
            )
            return
        strategy = str(app_state(self).spec.config.vocab_strategy)
        key = (str(t.path), str(s.path), strategy)
        if key == self._verdict_key:
            return
        self._verdict_key = key
        box.update(Text("comparing the tokenizers …", style="dim"))
        self._compare(*key)

    @work(thread=True, exclusive=True, group="verdict", exit_on_error=False)
    def _compare(self, teacher: str, student: str, strategy: str) -> None:
        verdict = tokenizer_verdict(teacher, student, strategy)
        self.app.call_from_thread(self._show_verdict, (teacher, student, strategy), verdict)

    def _show_verdict(self, key: tuple[str, str, str], verdict: dict) -> None:
        if key != self._verdict_key:
            return  # a newer pair was picked meanwhile
        head, detail = verdict_words(verdict)
        text = Text(head, style="bold")
        strategy = str(verdict.get("strategy", ""))
        if strategy not in ("", "error", "none", "refused"):
            text.append(f"\nvocabulary strategy: {strategy}")
        if detail:
            text.append("\n" + detail, style="dim")
        self.query_one("#models-verdict", Static).update(text)

    # ---- what a run of this pair measured ------------------------------------------------------
    def _update_coverage(self) -> None:
        t, s = self.column("teacher").good, self.column("student").good
        if t is None or s is None or t.path is None or s.path is None:
            self._show_coverage([])
            return
        output = Path(app_state(self).spec.config.output).expanduser()
        # A remote teacher's folder here is only its tokenizer's: any recorded teacher counts.
        self._read_coverage(output, None if t.remote else t.path, s.path)

    @work(thread=True, exclusive=True, group="coverage", exit_on_error=False)
    def _read_coverage(self, output: Path, teacher: Path | None, student: Path) -> None:
        measured = measured_alignment(output, teacher, student)  # a small JSON file
        self.app.call_from_thread(self._show_coverage, measured)

    def _show_coverage(self, measured: list[MeasuredAlignment]) -> None:
        box = self.query_one("#models-coverage", Static)
        box.set_class(bool(measured), "-shown")
        if not measured:
            box.update("")
            return
        text = Text("measured by the last run", style="bold")
        for m in measured:
            text.append(f"\n{m.domain}: ", style="bold")
            text.append(coverage_words(m))
        box.update(text)

    def on_run_completed(self, message: RunCompleted) -> None:
        self._update_coverage()  # the run may have written new figures

    def on_state_changed(self, message: StateChanged) -> None:
        # Our own message passes here on its way up (it bubbles); the app's copies do not.
        # Another pane (Config loading kd.toml) may have changed the pair.
        if not message.bubble and message.what in ("", "config", "models"):
            self._from_state()
            self._update_verdict()  # vocab_strategy or the output folder may have changed
        if not message.bubble:
            self._update_data()

    def _update_data(self) -> None:
        """The run's data file (kd.toml's `data`), as each model's template renders its first
        row: the format, the rows and the trained characters, checked before a run."""
        spec = app_state(self).spec
        box = self.query_one("#models-data", Static)
        box.display = bool(spec.data)
        if not spec.data:
            return
        pair = (spec.teacher or "demo-teacher", spec.student or "demo-student")
        cfg = {k: getattr(spec.config, k) for k in PREVIEW_FIELDS}
        kwargs = {"teacher": spec.teacher_chat_template_kwargs}
        kwargs["student"] = spec.student_chat_template_kwargs
        self._data_key = key = repr((spec.data, pair, cfg, kwargs))
        box.update(describe_data(domain_name(spec.data), spec.data, None))
        self._read_data(key, spec.data, *pair, cfg, kwargs)

    @work(thread=True, exclusive=True, group="models-data", exit_on_error=False)
    def _read_data(self, key: str, data: str, t: str, s: str, cfg: Any, kw: Any) -> None:
        result = cached_preview(data, t, s, cfg, kw)
        self.app.call_from_thread(self._show_data, key, data, result)

    def _show_data(self, key: str, data: str, result: dict[str, Any]) -> None:
        if key == self._data_key:
            box = self.query_one("#models-data", Static)
            box.update(describe_data(domain_name(data), data, result))
