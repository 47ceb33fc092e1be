"""The Domains pane's view of a data file (issue 25): what `kd_tui.data_preview` read, as the
words and the two rendered examples the pane shows (each model's template, the characters the
loss trains highlighted), so a user can check the masks before a run."""

from __future__ import annotations

from typing import Any

from rich.text import Text

TRAINED_STYLE = "bold black on green"


def rendered(example: dict[str, Any]) -> Text:
    """The exact string a tokenizer receives, the trained characters highlighted."""
    text = example["text"]
    out, at = Text(), 0
    for start, end in example["trained"]:
        out.append(text[at:start], style="dim")
        out.append(text[start:end], style=TRAINED_STYLE)
        at = end
    out.append(text[at:], style="dim")
    return out


def describe_data(name: str, spec: str, p: dict[str, Any] | None) -> Text:
    """The header of a data domain: format, rows, the split, and one row per model."""
    desc = Text(name, style="bold")
    desc.append(f" · data · {spec}\n")
    if p is None:
        desc.append("reading the data…", style="dim")
        return desc
    if "error" in p:
        desc.append(p["error"], style="red")
        return desc
    held = p["held_out"]
    where = "valid.jsonl" if held["from"] == "valid" else "a seeded 5%"
    desc.append(
        f"{p['format']} · {p['rows']} rows · teacher answers: {p['answers']} · "
        f"{held['rows']} held out ({where})\n"
    )
    for role in ("teacher", "student"):
        desc.append(f"{role} reads (trained characters highlighted):\n", style="italic")
        desc.append_text(rendered(p["examples"][role]))
        desc.append("\n")
    return desc


def list_label(p: dict[str, Any] | None) -> str:
    if p is None:
        return "data · reading…"
    if "error" in p:
        return "data · ⚠ unreadable"
    return f"data · {p['format']} · {p['rows']} rows"
