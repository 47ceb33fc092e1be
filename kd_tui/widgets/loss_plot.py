"""The live loss plot: KD, CE and combined over the run's steps (textual-plotext).

Points are buffered in a LossSeries as events arrive; the pane calls `replot()` from a
timer (a few times a second) and the figure is rebuilt only when the data, the size, the
series shown, the smoothing, the y scale or the theme changed, from at most two points per
column (braille dots).

Readable on long runs (issue 14): each domain's curve is drawn on its own (no line joins one
domain's last step to the next one's first), optionally smoothed by a debiased EMA that
restarts per domain (the raw curve stays faint behind it), on a linear or log y axis.
"""

from __future__ import annotations

from textual.app import RenderResult
from textual.color import Color
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from kd_tui.run_view import PLOT_MODES, SERIES, SMOOTHING_STEPS, LossSeries, Segment
from themes import series_colors

RGB = tuple[int, int, int]
FAINT = 0.35  # how much of the series colour the raw curve keeps behind a smoothed one
LOG_FLOOR = 1e-6  # a log axis when no value is positive

LABELS = {"kd": "KD (α·KL·T²)", "ce": "CE", "combined": "combined"}
MODE_TITLES = {"all": "KD · CE · combined", "kd": "KD", "ce": "CE", "combined": "combined"}


class LossPlot(PlotextPlot):
    """A PlotextPlot that draws a LossSeries and caches the built figure."""

    mode: reactive[str] = reactive("all")
    smoothing: reactive[float] = reactive(0.0)  # EMA weight: 0 raw ... 0.97 smooth
    log_y: reactive[bool] = reactive(False)

    def __init__(
        self, series: LossSeries | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        # Plotext's "clear" theme leaves canvas and axes in the default colours, so the
        # widget's own (theme) background and foreground show through; only the series are
        # coloured, from the theme's kd-series-* variables. It also halves the escape codes
        # Textual has to parse per figure compared with a full-colour canvas.
        self.theme = "clear"
        self.series = series if series is not None else LossSeries()
        self.boundaries: list[int] = []
        self.builds = 0  # how many figures were built (tests check we do not rebuild per event)
        self._key: tuple[object, ...] | None = None
        self._cached: RenderResult | None = None
        self._drawn_version = -1

    def on_mount(self) -> None:
        # (PlotextPlot.on_mount runs too: Textual calls the handler of every class in the MRO)
        self._title()

    def _title(self) -> None:
        """The series shown, then the smoothing and scale when they are not the plain ones."""
        title = f"Loss · {MODE_TITLES[self.mode]}"
        if self.smoothing > 0:
            title += f" · smoothed {self.smoothing:g}"
        if self.log_y:
            title += " · log"
        self.border_title = title

    def set_series(self, series: LossSeries, boundaries: list[int] | None = None) -> None:
        self.series = series
        self.boundaries = boundaries if boundaries is not None else []
        self._drawn_version = -1
        self.refresh()

    def replot(self) -> bool:
        """Redraw if new points arrived since the last figure. Returns whether it will."""
        if self.series.version == self._drawn_version:
            return False
        self.refresh()
        return True

    def cycle_mode(self) -> str:
        self.mode = PLOT_MODES[(PLOT_MODES.index(self.mode) + 1) % len(PLOT_MODES)]
        return self.mode

    def cycle_smoothing(self) -> float:
        """Next EMA weight of SMOOTHING_STEPS (from another weight: back to raw)."""
        steps = SMOOTHING_STEPS
        i = steps.index(self.smoothing) if self.smoothing in steps else -1
        self.smoothing = steps[(i + 1) % len(steps)]
        return self.smoothing

    def toggle_log(self) -> bool:
        self.log_y = not self.log_y
        return self.log_y

    def watch_mode(self, mode: str) -> None:
        self._title()
        self.refresh()

    def watch_smoothing(self, smoothing: float) -> None:
        self._title()
        self.refresh()

    def watch_log_y(self, log_y: bool) -> None:
        self._title()
        self.refresh()

    @property
    def points(self) -> int:
        return len(self.series)

    def render(self) -> RenderResult:
        key = (
            self.size,
            self.app.theme,
            self.mode,
            self.smoothing,
            self.log_y,
            self.series.version,
            tuple(self.boundaries),
        )
        if key == self._key and self._cached is not None:
            return self._cached
        self._draw()
        self._cached = super().render()
        self._key = key
        self._drawn_version = self.series.version
        self.builds += 1
        return self._cached

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        width = max(10, self.size.width)
        if not len(self.series):
            plt.title("waiting for the first step…")
            plt.xlabel("step")
            return
        variables = self.app.theme_variables
        colors = series_colors(variables)
        background = _rgb(variables.get("background", ""), (0, 0, 0))
        shown = SERIES if self.mode == "all" else (self.mode,)
        # Braille markers give two dots per column: more points than that cannot show.
        segments = self.series.segments(2 * width, self.boundaries, self.smoothing, shown)
        floor = _log_floor(segments) if self.log_y else None
        for name in shown:
            for i, seg in enumerate(segments):
                label = LABELS[name] if i == 0 else None  # one legend entry per series
                if seg.smooth is not None:  # the raw curve faint behind, smoothed on top
                    faint = _blend(colors[name], background, FAINT)
                    plt.plot(seg.x, _floored(seg.raw[name], floor), color=faint, marker="braille")
                    ys = seg.smooth[name]
                else:
                    ys = seg.raw[name]
                plt.plot(
                    seg.x, _floored(ys, floor), label=label, color=colors[name], marker="braille"
                )
        for x in self.boundaries:
            plt.vline(x, "gray")
        if self.log_y:
            plt.yscale("log")
        plt.xlabel("step")


def _rgb(value: str, default: RGB) -> RGB:
    try:
        return Color.parse(value).rgb
    except Exception:  # a missing or odd theme value
        return default


def _blend(color: RGB, background: RGB, keep: float) -> RGB:
    """`color` faded towards the background (plotext has no alpha)."""
    r, g, b = (round(c * keep + bg * (1 - keep)) for c, bg in zip(color, background, strict=True))
    return (r, g, b)


def _log_floor(segments: list[Segment]) -> float:
    """Where values <= 0 go on a log axis: a decade under the smallest positive value shown
    (a loss of exactly 0, e.g. KD at alpha = 0, stays visible at the bottom)."""
    low = min(
        (
            v
            for seg in segments
            for values in (*seg.raw.values(), *(seg.smooth or {}).values())
            for v in values
            if v > 0
        ),
        default=None,
    )
    return LOG_FLOOR if low is None else low / 10


def _floored(values: list[float], floor: float | None) -> list[float]:
    if floor is None:
        return values
    return [v if v > floor else floor for v in values]
