"""The live loss plot: KD, CE and combined over the run's steps (textual-plotext).

Points are buffered in a LossSeries as events arrive; the pane calls `replot()` from a
timer (a few times a second) and the figure is rebuilt only when the data, the size, the
series shown or the theme changed, from at most two points per column (braille dots).
"""

from __future__ import annotations

from textual.app import RenderResult
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from kd_tui.run_view import PLOT_MODES, SERIES, LossSeries
from themes import series_colors

LABELS = {"kd": "KD (α·KL·T²)", "ce": "CE", "combined": "combined"}
MODE_TITLES = {"all": "KD · CE · combined", "kd": "KD", "ce": "CE", "combined": "combined"}


class LossPlot(PlotextPlot):
    """A PlotextPlot that draws a LossSeries and caches the built figure."""

    mode: reactive[str] = reactive("all")

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
        self.border_title = f"Loss · {MODE_TITLES[self.mode]}"

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

    def watch_mode(self, mode: str) -> None:
        self.border_title = f"Loss · {MODE_TITLES[mode]}"
        self.refresh()

    @property
    def points(self) -> int:
        return len(self.series)

    def render(self) -> RenderResult:
        key = (self.size, self.app.theme, self.mode, self.series.version, len(self.boundaries))
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
        colors = series_colors(self.app.theme_variables)
        # Braille markers give two dots per column: more points than that cannot show.
        xs, ys = self.series.downsample(2 * width)
        shown = SERIES if self.mode == "all" else (self.mode,)
        for name in shown:
            plt.plot(xs, ys[name], label=LABELS[name], color=colors[name], marker="braille")
        for x in self.boundaries:
            plt.vline(x, "gray")
        plt.xlabel("step")
