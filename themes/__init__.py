"""The dashboard's themes (Textual `Theme` objects) and their .tcss.

Each theme also defines the plot's series colours as theme variables (`kd-series-kd`,
`kd-series-ce`, `kd-series-combined`), so the .tcss legend and the plotext figure both read
them from the active theme. The remembered choice lives in kd_tui/preferences.py.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

KD_DARK = Theme(
    name="kd-dark",
    primary="#5FA8D3",
    secondary="#7C6FD6",
    accent="#F2A541",
    warning="#F2A541",
    error="#E5534B",
    success="#57C785",
    foreground="#D8DEE4",
    background="#14181D",
    surface="#1B2027",
    panel="#232A33",
    dark=True,
    variables={
        "kd-series-kd": "#5FA8D3",
        "kd-series-ce": "#F2A541",
        "kd-series-combined": "#57C785",
        "footer-key-foreground": "#5FA8D3",
    },
)

KD_LIGHT = Theme(
    name="kd-light",
    primary="#1F6FA8",
    secondary="#5A4FB8",
    accent="#B86E00",
    warning="#B86E00",
    error="#C0362C",
    success="#1E8449",
    foreground="#1C2329",
    background="#F4F5F7",
    surface="#E8EBEF",
    panel="#DCE1E7",
    dark=False,
    variables={
        "kd-series-kd": "#1F6FA8",
        "kd-series-ce": "#B86E00",
        "kd-series-combined": "#1E8449",
        "footer-key-foreground": "#1F6FA8",
    },
)

THEMES: tuple[Theme, ...] = (KD_DARK, KD_LIGHT)
DEFAULT_THEME = KD_DARK.name
SERIES_VARIABLES = {"kd": "kd-series-kd", "ce": "kd-series-ce", "combined": "kd-series-combined"}
# Fallbacks when a user picks one of Textual's built-in themes (no kd-series-* variables).
SERIES_FALLBACK = {"kd": "primary", "ce": "warning", "combined": "success"}

# Fallback values of the custom variables for themes that lack them (Textual's built-ins):
# a .tcss reference to a variable no theme defines would fail to parse.
VARIABLE_DEFAULTS = {var: KD_DARK.variables[var] for var in SERIES_VARIABLES.values()}
TCSS_PATH = Path(__file__).with_name("kd.tcss")


def series_colors(variables: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    """RGB colours of the plot's series (kd, ce, combined) from a theme's CSS variables."""
    from textual.color import Color

    out: dict[str, tuple[int, int, int]] = {}
    for series, var in SERIES_VARIABLES.items():
        value = variables.get(var) or variables.get(SERIES_FALLBACK[series]) or "#888888"
        try:
            out[series] = Color.parse(value).rgb
        except Exception:  # an odd value in a user theme: grey rather than a crash
            out[series] = (136, 136, 136)
    return out
