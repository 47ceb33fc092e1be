"""A data file as the Domains pane shows it (issue 25): its format, rows and held-out split,
and one row rendered by each model's chat template with the characters the loss trains.

`preview(...)` runs in a short child process (`python -m kd_tui.data_preview ...`, MLX and
the tokenizers stay out of the dashboard's process, as the Models pane's tokenizer verdict
does); `data_preview(...)` is the dashboard's blocking call (from a thread worker). The reply
is one JSON object: {"name", "format", "rows", "answers", "held_out", "prompts",
"held_out_rows", "examples": {"teacher": {"text", "trained": [[start, end], ...]},
"student": ...}} or {"error": one line}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

LIST_ROWS = 500  # rows listed in the pane (the run reads them all)
# The settings a preview depends on (besides the data, the pair and the template tables).
PREVIEW_FIELDS = ("seed", "teacher_answers", "train_on", "prompt_key", "completion_key")


def _row_text(row: Any) -> str:
    """A row's first words for the list: its prompt, first user turn, or text."""
    for attr in ("prompt", "text"):
        if isinstance(getattr(row, attr, None), str):
            return getattr(row, attr)
    users = [m.content for m in getattr(row, "messages", ()) if m.role == "user" and m.content]
    return users[0] if users else "(conversation)"


def _example(model: str, role: str, row: Any, settings: Any, kwargs: Any) -> dict[str, Any]:
    from mlx_lm.utils import load_tokenizer

    from kd_core.data_files import render_prompt, render_row
    from kd_core.models.load import resolve_model

    tok = load_tokenizer(resolve_model(model, role))
    if settings.has_answers:
        r = render_row(tok, row, train_on=settings.train_on, chat_template_kwargs=kwargs)
    else:
        r = render_prompt(tok, row, chat_template_kwargs=kwargs)
    return {"text": r.text, "trained": [[sp.start, sp.stop_end] for sp in r.spans]}


def preview(
    spec: str, teacher: str, student: str, config: dict[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    from kd_core.config import KDConfig
    from kd_core.data_files.domain import DataSettings, load_data_domain
    from kd_core.errors import one_line

    try:
        cfg = KDConfig.from_record(config)
        settings = DataSettings(
            cfg.teacher_answers, cfg.train_on, cfg.prompt_key, cfg.completion_key,
            kwargs.get("teacher"), kwargs.get("student"),
        )  # fmt: skip
        dom = load_data_domain(spec, settings, cfg.seed)
        split = dom.split
        out: dict[str, Any] = {
            "name": dom.name,
            "format": dom.format,
            "rows": len(dom.source.train.rows),
            "answers": dom.answers,
            "held_out": {"from": split.held_out_from, "rows": len(split.held_out)},
            "prompts": [_row_text(r) for r in split.train[:LIST_ROWS]],
            "held_out_rows": [_row_text(r) for r in split.held_out[:LIST_ROWS]],
        }
        row = split.train[0]
        flags = _Flags(dom.source.train.has_answers, cfg.train_on)
        out["examples"] = {
            "teacher": _example(teacher, "teacher", row, flags, kwargs.get("teacher")),
            "student": _example(student, "student", row, flags, kwargs.get("student")),
        }
        return out
    except Exception as e:
        return {"error": one_line(e)}


class _Flags:
    def __init__(self, has_answers: bool, train_on: str) -> None:
        self.has_answers, self.train_on = has_answers, train_on


def data_preview(
    spec: str, teacher: str, student: str, config: dict[str, Any], kwargs: dict[str, Any],
    timeout: float = 120.0,
) -> dict[str, Any]:  # fmt: skip
    """The preview from a child process (blocking: call it from a thread worker)."""
    args = [spec, teacher, student, json.dumps(config), json.dumps(kwargs)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kd_tui.data_preview", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    except subprocess.TimeoutExpired:
        return {"error": "reading the data took too long"}
    for line in reversed(done.stdout.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return {"error": f"cannot read the data: {last[:200]}"}


_CACHE: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


def _versions(spec: str) -> list[tuple[str, int, int]]:
    """(file, mtime, size) of what `spec` reads: an edited file is read again."""
    p = Path(spec).expanduser()
    files = [p / n for n in ("train.jsonl", "valid.jsonl")] if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            continue
    return out


def cached_preview(
    spec: str, teacher: str, student: str, config: dict[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`data_preview`, read once per file version and settings for both panes that show it
    (the Domains and Models tabs); failures are not kept (the next call tries again)."""
    key = json.dumps([spec, teacher, student, config, kwargs, _versions(spec)], default=str)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    result = data_preview(spec, teacher, student, config, kwargs)
    if "error" not in result:
        with _LOCK:
            _CACHE[key] = result
    return result


def main(argv: list[str]) -> int:
    spec, teacher, student, config, kwargs = argv
    result = preview(spec, teacher, student, json.loads(config), json.loads(kwargs))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # skip MLX's teardown (docs/ARCHITECTURE.md: it can abort at exit)
