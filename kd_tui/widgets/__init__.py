"""Widgets of the dashboard, one concern per module."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def set_text(widget: Static, content: str | Text, layout: bool = False) -> bool:
    """Update a Static only when its content changed, without a layout pass by default.

    A layout pass re-arranges the whole screen; the Train pane's labels have fixed sizes,
    so repainting them is enough (this keeps the UI's cost per redraw small).
    """
    key = (content.plain, tuple(content.spans)) if isinstance(content, Text) else content
    if getattr(widget, "_kd_text_key", None) == key:
        return False
    widget._kd_text_key = key  # type: ignore[attr-defined]
    widget.update(content, layout=layout)
    return True
