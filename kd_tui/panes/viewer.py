"""Viewer pane: why a user trusts the adapter.

Teacher, base student and student + a trained adapter answer the same prompt side by side,
streamed token by token from a child process (kd_tui.infer_worker). Then the token
inspector shows, at a position of the teacher's answer, each model's top-k next-token
probabilities (teacher-forced on the teacher's answer), the KL to the teacher and whether
the top-1 token agrees.

Keys: type a prompt + enter (an empty prompt takes a held-out prompt of the run's first
domain; → accepts a suggested one) · esc stops · tab to the inspector, then ←/→ move one
token, home/end jump · the adapter box takes any adapter folder (default: the last run's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Input, Static

from kd_core.data_files import DataFileError
from kd_core.data_files.domain import DataSettings, load_data_domain
from kd_core.domains import BUILTIN_DOMAINS, DOMAIN_PROMPTS, planned_domains
from kd_tui.inference import InferenceClient
from kd_tui.messages import RunCompleted, StateChanged
from kd_tui.panes.paths import PathSuggester
from kd_tui.state import app_state
from kd_tui.viewer_protocol import (
    Cancelled,
    Done,
    ErrorReply,
    Finished,
    Inspection,
    Position,
    Ready,
    Reply,
    Slot,
    Status,
    Token,
    WorkerExit,
)

SLOTS = ("teacher", "student", "adapted")
TITLES = {"teacher": "Teacher", "student": "Student (base)", "adapted": "Student + adapter"}
TOP_K = 5
BAR_CELLS = 8
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(p: float, cells: int = BAR_CELLS) -> str:
    """A horizontal bar of `cells` character cells for a probability, in eighths."""
    n = max(0, min(cells * 8, round(p * cells * 8)))
    return "█" * (n // 8) + (_EIGHTHS[n % 8] if n % 8 else "")


def find_adapter(output: Path, domain: str | None) -> Path | None:
    """<output>/<domain> if it holds an adapter, else the first domain folder that does."""
    if domain and (output / domain / "adapters.safetensors").is_file():
        return output / domain
    try:
        for d in sorted(output.iterdir()):
            if (d / "adapters.safetensors").is_file():
                return d
    except OSError:
        pass
    return None


@dataclass
class Answer:
    """One column's answer as it streams in."""

    pieces: list[str] = field(default_factory=list)  # text of each generated token
    tokens: list[int] = field(default_factory=list)
    tail: str = ""  # text that came without a token (the detokenizer's final flush)
    done: str | None = None  # finish reason once finished
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces) + self.tail


class AnswerBox(VerticalScroll):
    """A bordered, scrolling column showing one model's answer."""

    def __init__(self, slot: str) -> None:
        super().__init__(id=f"ans-{slot}", classes="answer")
        self.slot = slot

    def compose(self) -> ComposeResult:
        yield Static("", id=f"ans-{self.slot}-text", classes="answer-text")

    def show(self, answer: Answer, highlight: int | None = None, note: str = "") -> None:
        text = Text()
        if answer.error:
            text.append(answer.error, style="red")
        elif not answer.pieces and not answer.tail:
            text.append(note or ("…" if answer.done is None else "(empty answer)"), style="dim")
        else:
            for i, piece in enumerate(answer.pieces):
                text.append(piece, style="reverse bold" if i == highlight else "")
            text.append(answer.tail)
            if answer.done == "length":
                text.append(" ⋯", style="dim")
            elif answer.done == "cancelled":
                text.append(" (stopped)", style="dim")
        self.query_one(Static).update(text)
        if answer.done is None:
            self.scroll_end(animate=False)


class TokenInspector(Widget, can_focus=True):
    """Top-k of each model at one position of the teacher's answer, with bars, KL and top-1."""

    DEFAULT_CSS = """
    TokenInspector { height: auto; min-height: 5; max-height: 14;
                     border: round $primary-darken-2; padding: 0 1; }
    TokenInspector:focus { border: round $accent; }
    """
    BINDINGS = [
        Binding("left", "move(-1)", "previous token"),
        Binding("right", "move(1)", "next token"),
        Binding("home", "jump(0)", "first token", show=False),
        Binding("end", "jump(-1)", "last token", show=False),
    ]
    position: reactive[int] = reactive(0)

    class Moved(Message):
        def __init__(self, position: int) -> None:
            super().__init__()
            self.position = position

    def __init__(self) -> None:
        super().__init__(id="view-inspector")
        self.positions: list[Position] = []
        self.titles: dict[str, str] = {}
        self.note = "answers first: the inspector fills in when the teacher has answered"

    def set_data(self, positions: list[Position], titles: dict[str, str]) -> None:
        self.positions, self.titles = positions, titles
        self.position = 0
        self._show_position()

    def clear(self, note: str) -> None:
        self.positions, self.note = [], note
        self.border_title = "Token inspector"
        self.refresh(layout=True)

    def action_move(self, step: int) -> None:
        if self.positions:
            self.position = max(0, min(len(self.positions) - 1, self.position + step))

    def action_jump(self, where: int) -> None:
        if self.positions:
            self.position = where % len(self.positions)

    def watch_position(self, position: int) -> None:
        self._show_position()

    def _show_position(self) -> None:
        if self.positions:
            pos = self.positions[min(self.position, len(self.positions) - 1)]
            self.border_title = (
                f"Token inspector · position {pos['index'] + 1}/"
                f"{len(self.positions)} · “{pos['token']}”"
            )
        self.refresh(layout=True)
        self.post_message(self.Moved(self.position))

    def render(self) -> Any:
        if not self.positions:
            return Text(self.note, style="dim")
        pos = self.positions[min(self.position, len(self.positions) - 1)]
        return inspector_table(pos, self.titles, self.positions)


def answer_summary(positions: list[Position], slot: str) -> tuple[float | None, int, int]:
    """(mean KL, top-1 agreements, positions compared) of a slot over the whole answer."""
    kls = [
        p["slots"][slot]["kl"]
        for p in positions
        if slot in p["slots"] and p["slots"][slot].get("kl") is not None
    ]
    agree = [bool(p["slots"][slot].get("agree")) for p in positions if slot in p["slots"]]
    return (sum(kls) / len(kls) if kls else None), sum(agree), len(agree)


def inspector_table(
    pos: Position, titles: dict[str, str], positions: list[Position] | None = None
) -> Table:
    slots = [s for s in titles if s in pos["slots"]]
    table = Table(box=None, padding=(0, 1), expand=False, show_edge=False)
    table.add_column("", style="dim", no_wrap=True)
    for s in slots:
        table.add_column(titles[s], no_wrap=True)
    chosen = pos["token"]
    k = max((len(pos["slots"][s].get("top", [])) for s in slots), default=0)
    for r in range(k):
        cells = []
        for s in slots:
            top = pos["slots"][s].get("top", [])
            if r >= len(top):
                cells.append(Text(""))
                continue
            tok, p = top[r]
            cell = Text(f"{tok[:12]:<12} ", style="bold" if tok == chosen else "")
            cell.append(f"{p:.2f} ", style="")
            cell.append(f"{bar(p):<{BAR_CELLS}}", style="green" if tok == chosen else "cyan")
            cells.append(cell)
        table.add_row(str(r + 1), *cells)
    cells = []
    for s in slots:
        pt = pos["slots"][s].get("p_token")
        cells.append(Text("—" if pt is None else f"{pt:.3f}"))
    table.add_row(f"p(“{chosen[:10]}”)", *cells)
    kl_cells, agree_cells = [], []
    for i, s in enumerate(slots):
        d = pos["slots"][s]
        if i == 0:
            kl_cells.append(Text("(reference)", style="dim"))
            agree_cells.append(Text(""))
            continue
        kl = d.get("kl")
        kl_cells.append(Text("— (other vocabulary)" if kl is None else f"{kl:.3f}"))
        agree_cells.append(
            Text("✓ agrees", style="green") if d.get("agree") else Text("✗ differs", style="red")
        )
    table.add_row("KL(teacher‖·)", *kl_cells)
    table.add_row("top-1", *agree_cells)
    if positions:
        # The whole answer at a glance: does the adapter bring the student closer?
        cells = [Text("whole answer:", style="dim")]
        for s in slots[1:]:
            mean_kl, agree, n = answer_summary(positions, s)
            kl_text = "" if mean_kl is None else f"mean KL {mean_kl:.3f} · "
            cells.append(Text(f"{kl_text}top-1 {agree}/{n}"))
        table.add_row("answer", *cells)
    return table


class ViewerPane(Container):
    DEFAULT_CSS = """
    ViewerPane { layout: vertical; }
    ViewerPane #view-top, ViewerPane #view-mid { height: 3; }
    ViewerPane #view-prompt { width: 1fr; }
    ViewerPane #view-temp, ViewerPane #view-max { width: 14; }
    ViewerPane #view-adapter { width: 1fr; }
    ViewerPane #view-status { width: 1fr; height: 3; padding: 1 1 0 1; color: $text-muted; }
    ViewerPane #view-status.error { color: $error; }
    ViewerPane #view-answers { height: 1fr; min-height: 6; }
    ViewerPane .answer { width: 1fr; border: round $primary-darken-2; padding: 0 1; }
    ViewerPane #view-keys { height: 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "stop", "stop answering")]

    class Reply(Message):
        """One reply of the inference worker (posted from its reader thread)."""

        def __init__(self, reply: Reply) -> None:
            super().__init__()
            self.reply = reply

    def __init__(self) -> None:
        super().__init__()
        self.client: InferenceClient | None = None
        self.answers: dict[str, Answer] = {s: Answer() for s in SLOTS}
        self.slots: list[Slot] = []
        self.prompt = ""
        self.gen_id: int | None = None
        self.inspect_id: int | None = None
        self._auto_adapter = ""  # the adapter folder we filled in (replaced while unedited)
        self._data_key: tuple[Any, ...] | None = None  # the data file read for _data_held
        self._data_held: list[str] = []
        self._last_run: Path | None = None  # output of the last RunCompleted seen

    def compose(self) -> ComposeResult:
        cfg = app_state(self).spec.config
        with Horizontal(id="view-top"):
            yield Input(
                placeholder="prompt (enter: answer · empty: a held-out prompt)", id="view-prompt"
            )
            yield Input(
                str(cfg.teacher_temperature),
                placeholder="T",
                id="view-temp",
                tooltip="sampling temperature (0 = greedy)",
            )
            yield Input(
                str(min(cfg.max_tokens, 256)),
                placeholder="max tokens",
                id="view-max",
                tooltip="longest answer, in tokens",
            )
        with Horizontal(id="view-mid"):
            yield Input(
                placeholder="adapter folder (holds adapters.safetensors)",
                id="view-adapter",
                suggester=PathSuggester(dirs_only=True),
            )
            yield Static("", id="view-status")
        with Horizontal(id="view-answers"):
            for s in SLOTS:
                yield AnswerBox(s)
        yield TokenInspector()
        yield Static(
            "enter answer · esc stop · tab to the inspector: ←/→ token, home/end", id="view-keys"
        )

    def on_mount(self) -> None:
        self.query_one("#view-temp").border_title = "T"
        self.query_one("#view-max").border_title = "max"
        self.client = InferenceClient(lambda reply: self.post_message(self.Reply(reply)))
        self._refresh_defaults()
        for s in SLOTS:
            self._box(s).show(Answer(), note="ask something above (enter)")
        self._titles()

    def on_unmount(self) -> None:
        if self.client is not None:
            self.client.close(timeout=2.0)

    # ---- defaults from the run spec ---------------------------------------------------------
    @property
    def state(self) -> Any:
        return app_state(self)

    def _domains(self) -> list[str]:
        spec = self.state.spec
        return planned_domains(spec.domains, spec.domain_files, spec.data)

    def _heldout(self) -> list[str]:
        out: list[str] = []
        for d in self._domains():
            if d in BUILTIN_DOMAINS:
                out += DOMAIN_PROMPTS[d]["heldout"]
        return out + self._data_heldout()

    def _data_heldout(self) -> list[str]:
        """The data's held-out rows (valid.jsonl, else the seeded 5% a run holds out), read
        once per file version and settings; an unreadable file offers none (a run says why)."""
        spec = self.state.spec
        if not spec.data:
            return []
        cfg = spec.config
        try:
            stat = Path(spec.data).expanduser().stat()
            key = (spec.data, stat.st_mtime_ns, stat.st_size, cfg.seed, cfg.prompt_key,
                   cfg.completion_key)  # fmt: skip
            if self._data_key != key:
                keys = DataSettings(prompt_key=cfg.prompt_key, completion_key=cfg.completion_key)
                self._data_held = load_data_domain(spec.data, keys, cfg.seed).held_out_prompts()
                self._data_key = key
        except (OSError, DataFileError):
            return []
        return list(self._data_held)

    def default_adapter(self) -> Path | None:
        domains = self._domains()
        first = domains[0] if domains else None
        for base in (self._last_run, self.state.last_output, Path(self.state.spec.config.output)):
            if base is not None:
                found = find_adapter(Path(base).expanduser(), first)
                if found is not None:
                    return found
        return None

    def _refresh_defaults(self) -> None:
        box = self.query_one("#view-adapter", Input)
        if box.value in ("", self._auto_adapter):  # never overwrite what the user typed
            found = self.default_adapter()
            self._auto_adapter = str(found) if found else ""
            box.value = self._auto_adapter
        self.query_one("#view-prompt", Input).suggester = SuggestFromList(
            self._heldout(), case_sensitive=False
        )
        self._titles()

    def _titles(self) -> None:
        names = {"teacher": self.state.teacher_name, "student": self.state.student_name}
        adapter = self.query_one("#view-adapter", Input).value.strip()
        for s in SLOTS:
            title = TITLES[s]
            if s in names:
                title += f" · {Path(names[s]).name or names[s]}"
            elif adapter:
                title += f" · {Path(adapter).name}"
            self._box(s).border_title = title

    def on_run_completed(self, message: RunCompleted) -> None:
        self._last_run = Path(message.output)
        self._refresh_defaults()

    def on_state_changed(self, message: StateChanged) -> None:
        self._refresh_defaults()

    def on_show(self) -> None:
        self._refresh_defaults()

    # ---- asking -------------------------------------------------------------------------------
    def _box(self, slot: str) -> AnswerBox:
        return self.query_one(f"#ans-{slot}", AnswerBox)

    def _status(self, text: str, error: bool = False) -> None:
        st = self.query_one("#view-status", Static)
        st.update(text)
        st.set_class(error, "error")

    def _settings(self) -> tuple[float, int] | None:
        try:
            temp = float(self.query_one("#view-temp", Input).value)
            if not 0 <= temp <= 5:
                raise ValueError
        except ValueError:
            self._status("T: a number from 0 (greedy) to 5", error=True)
            return None
        try:
            max_tokens = int(self.query_one("#view-max", Input).value)
            if not 1 <= max_tokens <= 4096:
                raise ValueError
        except ValueError:
            self._status("max: a whole number of tokens from 1 to 4096", error=True)
            return None
        return temp, max_tokens

    @on(Input.Submitted, "#view-prompt, #view-temp, #view-max")
    def _submitted(self) -> None:
        self.ask()

    @on(Input.Submitted, "#view-adapter")
    def _adapter_submitted(self) -> None:
        self._titles()
        if self.query_one("#view-prompt", Input).value.strip():
            self.ask()

    def ask(self, prompt: str | None = None) -> None:
        """Start the three answers for the prompt in the box (or `prompt`)."""
        box = self.query_one("#view-prompt", Input)
        if prompt is not None:
            box.value = prompt
        if not box.value.strip():
            held = self._heldout()
            if not held:
                self._status("type a prompt", error=True)
                return
            box.value = held[0]
        settings = self._settings()
        if settings is None or self.client is None:
            return
        temp, max_tokens = settings
        self.prompt = box.value.strip()
        self.slots = [
            Slot("teacher", self.state.teacher_name),
            Slot("student", self.state.student_name),
        ]
        self.answers = {s: Answer() for s in SLOTS}
        adapter = self.query_one("#view-adapter", Input).value.strip()
        if adapter:
            self.slots.append(
                Slot("adapted", self.state.student_name, str(Path(adapter).expanduser()))
            )
        else:
            self.answers[
                "adapted"
            ].error = "no adapter yet: train a domain, or type an adapter folder above"
        self._titles()
        for s in SLOTS:
            self._box(s).show(self.answers[s])
        self.query_one(TokenInspector).clear("waiting for the answers …")
        self.inspect_id = None
        self.gen_id = self.client.generate(
            self.prompt, self.slots, temp, max_tokens, seed=int(self.state.spec.config.seed)
        )
        self._status("starting the models …")

    def action_stop(self) -> None:
        if self.client is not None and self.gen_id is not None:
            self.client.cancel()

    # ---- replies ------------------------------------------------------------------------------
    def on_viewer_pane_reply(self, message: ViewerPane.Reply) -> None:
        r = message.reply
        match r:
            case WorkerExit():
                self.gen_id = self.inspect_id = None
                self._status(r.message, error=True)
                return
            case Ready() | Cancelled():
                return
        if r.id is not None and r.id == self.inspect_id:
            self._inspection_reply(r)
            return
        if r.id is None or r.id != self.gen_id:
            if isinstance(r, ErrorReply) and r.id is None:
                self._status(r.message, error=True)  # e.g. an unreadable line
            return  # a reply to a request we no longer wait for
        self._generation_reply(r)

    def _generation_reply(self, r: Reply) -> None:
        """A reply to the generation this pane waits for: a token, an answer's end, ..."""
        match r:
            case Status():
                self._status(r.message)
            case Token() if r.slot in self.answers:
                a = self.answers[r.slot]
                if r.token is None:
                    a.tail += r.text
                else:
                    a.pieces.append(r.text)
                    a.tokens.append(r.token)
                self._box(r.slot).show(a)
                self._progress()
            case Done() if r.slot in self.answers:
                a = self.answers[r.slot]
                a.done = r.finish_reason or "stop"
                a.tokens = list(r.tokens)
                self._box(r.slot).show(a)
            case ErrorReply() if r.slot in self.answers:
                self.answers[r.slot].error = r.message
                self._box(r.slot).show(self.answers[r.slot])
            case ErrorReply():
                self._status(r.message, error=True)
            case Finished():
                self.gen_id = None
                self._finished()

    def _progress(self) -> None:
        counts = " · ".join(
            f"{s} {len(self.answers[s].tokens)}"
            for s in SLOTS
            if any(sl.name == s for sl in self.slots)
        )
        self._status(f"answering · {counts} tokens")

    def _finished(self) -> None:
        teacher = self.answers["teacher"]
        if teacher.error or not teacher.tokens:
            self._status(
                "done" + ("" if teacher.tokens else " · the teacher wrote nothing to inspect")
            )
            self.query_one(TokenInspector).clear("nothing to inspect")
            return
        if teacher.done == "cancelled":
            self._status("stopped")
        usable = [s for s in self.slots if not self.answers[s.name].error]
        if self.client is None:
            return
        self.inspect_id = self.client.inspect(self.prompt, teacher.tokens, usable, TOP_K)
        self._status("done · inspecting every position of the teacher's answer …")

    def _inspection_reply(self, r: Reply) -> None:
        match r:
            case Inspection():
                self.inspect_id = None
                titles = {
                    s.name: TITLES[s.name] for s in self.slots if not self.answers[s.name].error
                }
                self.query_one(TokenInspector).set_data(r.positions, titles)
                self._status("done · tab to the inspector, ←/→ to move along the teacher's answer")
            case ErrorReply():
                # A slot's error: the inspection still comes, without that slot.
                self.inspect_id = None if r.slot is None else self.inspect_id
                self._status(f"inspector: {r.message}", error=True)

    @on(TokenInspector.Moved)
    def _moved(self, event: TokenInspector.Moved) -> None:
        # The chosen position is highlighted in the teacher's answer.
        self._box("teacher").show(self.answers["teacher"], highlight=event.position)
