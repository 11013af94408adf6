"""PNG plots of a load-test report: latency percentiles over time, throughput against
offered load.

Two steps, so that what is drawn can be checked without looking at pixels:
:mod:`taonet.loadtest._plotdata` makes the series from the report (pure functions;
ConfigError for a report that does not hold what they need), and :func:`figures`
draws exactly those series with matplotlib (the ``plots`` extra, imported only when
drawing, on its Agg backend: no display is needed); :func:`write_plots` writes them
as PNG files, atomically, only directly in the directory it is given (a file name
prefix that would lead elsewhere is refused).

* ``latency.png``: p50, p90, p99, p99.9 and max of each interval on a log scale, in
  milliseconds from each request's intended send time (open model); the warm-up,
  whose results are excluded, shaded; red crosses along the top where requests failed,
  with their count; a dash-dotted line where the run was interrupted or a worker lost.
* ``throughput.png``: left, requests answered per second (ok or failed, warm-up
  included) and ok per second over time, with the offered rate of the open model;
  right (open model), each interval's answered rate against its offered rate with the
  line y = x: points on the line kept up, points below it (red) are intervals where
  the server (or the generator) answered less than 95 % of what was offered, and a
  cross marks an interval with failed requests (answered, but not served). The run's
  overall figure is the star, and the report's note is the subtitle.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from taonet.loadtest._extras import MissingExtraError
from taonet.loadtest._plotdata import (
    LatencySeries,
    ThroughputSeries,
    latency_series,
    throughput_series,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["figures", "plot_names", "require_plots", "write_plots"]

#: What to install for the plots.
PLOTS_HINT: Final = "pip install 'taonet[plots]'"


def plot_names(prefix: str = "") -> tuple[str, str]:
    """The file names of the latency and throughput plots (``prefix`` for a quick run's
    targets: ``echo-latency.png``)."""
    return f"{prefix}latency.png", f"{prefix}throughput.png"


def figures(report: dict[str, Any]) -> tuple[Figure, Figure]:
    """The latency and throughput figures of ``report``, drawn from exactly
    :func:`latency_series` and :func:`throughput_series` (ConfigError if malformed,
    MissingExtraError without matplotlib)."""
    latency, throughput = latency_series(report), throughput_series(report)
    figure_class = _figure_class()
    first = figure_class(figsize=(11, 5.5), layout="constrained")
    _draw_latency(first, latency)
    second = figure_class(figsize=(11, 5.5), layout="constrained")
    _draw_throughput(second, throughput)
    return first, second


def write_plots(report: dict[str, Any], directory: Path, *, prefix: str = "") -> list[Path]:
    """Draw ``report``'s latency and throughput plots into ``directory``; their paths.

    MissingExtraError without matplotlib, ConfigError for a malformed report or a
    ``prefix`` that would put a file anywhere but directly in ``directory`` (both
    before anything is written), for a report matplotlib cannot draw, or for a file
    that cannot be written."""
    from taonet import ConfigError
    from taonet.files import atomic_write

    names = plot_names(prefix)
    for name in names:
        # The prefix may come from a report's target name: a plain file name only.
        if (
            any(c in name for c in "/\\\0")
            or name.startswith(".")
            or ((directory / name).parent != directory)
        ):
            raise ConfigError(f"a plot's file name must be a plain name in {directory}")
    drawn = []
    try:
        for figure in figures(report):
            buffer = io.BytesIO()
            # No software version in the file: the same report draws the same bytes.
            figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
            drawn.append(buffer.getvalue())
    except (OverflowError, ValueError) as exc:  # matplotlib's, for what it cannot lay out
        raise ConfigError(f"cannot draw the report's plots: {str(exc)[:100]}") from None
    paths = []
    for name, data in zip(names, drawn, strict=True):
        path = directory / name
        atomic_write(path, data, mode=0o644)
        paths.append(path)
    return paths


def require_plots() -> None:
    """Check that matplotlib can be imported (MissingExtraError, one line, if not)."""
    _figure_class()


def _figure_class() -> type[Figure]:
    """matplotlib's Figure bound to the Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(
            f"taonet loadtest plots need matplotlib, which is not installed: {PLOTS_HINT}"
        ) from None

    class AggFigure(Figure):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            FigureCanvasAgg(self)

    return AggFigure


def _nan(values: tuple[float | None, ...]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _shade_warmup(ax: Axes, warmup_s: float) -> None:
    if warmup_s > 0:
        ax.axvspan(0, warmup_s, color="0.88", label="warm-up (excluded)", zorder=0)


def _draw_marks(ax: Axes, marks: tuple[tuple[float, str], ...]) -> None:
    for seconds, what in marks:
        ax.axvline(
            seconds, color="black", linestyle="-.", linewidth=1, label=f"{what} ({seconds:g} s)"
        )


def _draw_latency(figure: Figure, series: LatencySeries) -> None:
    ax = figure.add_subplot()
    drawn = [v for _, values in series.percentiles for v in values if v is not None]
    for label, values in series.percentiles:
        ax.plot(series.t_s, _nan(values), marker=".", label=label)
    ax.set_yscale("log")
    if drawn:
        ax.set_ylim(min(drawn) / 2, max(drawn) * 3)
    else:
        ax.set_ylim(0.01, 1000)
        ax.text(
            0.5, 0.5, "no request succeeded after the warm-up", ha="center", transform=ax.transAxes
        )
    _shade_warmup(ax, series.warmup_s)
    _draw_marks(ax, series.marks)
    if series.errors:
        total = sum(count for _, count in series.errors)
        ax.scatter(
            [t for t, _ in series.errors],
            [0.95] * len(series.errors),
            marker="x",
            color="red",
            transform=ax.get_xaxis_transform(),
            zorder=5,
            label=f"failed requests ({total})",
        )
        for t, count in series.errors:
            ax.annotate(
                str(count),
                (t, 0.95),
                xycoords=ax.get_xaxis_transform(),
                textcoords="offset points",
                xytext=(0, -12),
                ha="center",
                color="red",
                fontsize=7,
            )
    ax.set_xlim(0, max([*series.t_s, *(t for t, _ in series.marks)], default=1.0) * 1.03)
    ax.set_xlabel("seconds from the start (end of each interval)")
    measured = "from the intended send time" if series.model == "open" else "closed model"
    ax.set_ylabel(f"latency, ms ({measured}, log scale)")
    ax.set_title(f"taonet loadtest {series.target}: latency percentiles per interval")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _draw_throughput(figure: Figure, series: ThroughputSeries) -> None:
    open_model = series.offered_per_s is not None
    over_time = figure.add_subplot(1, 2, 1) if open_model else figure.add_subplot()
    _shade_warmup(over_time, series.warmup_s)
    _draw_marks(over_time, series.marks)
    # Each interval's rate over the interval it covers.
    edges = [series.t_s[0] - series.interval_s, *series.t_s] if series.t_s else [0.0]
    if series.offered_per_s is not None:
        over_time.stairs(series.offered_per_s, edges, color="0.4", linestyle="--", label="offered")
    over_time.stairs(series.answered_per_s, edges, linewidth=2, label="answered (ok or failed)")
    over_time.stairs(series.ok_per_s, edges, label="ok (after warm-up)")
    if any(series.failed_per_s):
        over_time.stairs(series.failed_per_s, edges, color="red", label="failed")
    behind = [
        (t - series.interval_s / 2, answered)
        for t, answered, late in zip(series.t_s, series.answered_per_s, series.behind, strict=True)
        if late
    ]
    if behind:
        over_time.scatter(
            *zip(*behind, strict=True), color="red", zorder=5, label="behind the offered rate"
        )
    over_time.set_xlim(0, max([*edges, *(t for t, _ in series.marks)]))
    over_time.set_xlabel("seconds from the start (end of each interval)")
    over_time.set_ylabel("requests per second")
    over_time.set_ylim(bottom=0)
    over_time.set_title(f"{series.target}: throughput over time ({series.model} model)")
    over_time.grid(True, alpha=0.3)
    over_time.legend(loc="best", fontsize=8)
    # The note may be long (the rate not sustained, and why): wrapped, never cut off.
    figure.suptitle(textwrap.fill(series.note, 150), fontsize=9)
    if series.offered_per_s is None:
        return
    against = figure.add_subplot(1, 2, 2)
    failing = [
        (o, a)
        for o, a, f in zip(
            series.offered_per_s, series.answered_per_s, series.failed_per_s, strict=True
        )
        if o > 0 and f > 0
    ]
    points = [
        (o, a, late)
        for o, a, late in zip(
            series.offered_per_s, series.answered_per_s, series.behind, strict=True
        )
        if o > 0
    ]
    top = (
        max(
            [
                1.0,
                *(max(o, a) for o, a, _ in points),
                series.target_per_s or 0,
                series.achieved_per_s or 0,
            ]
        )
        * 1.1
    )
    against.plot([0, top], [0, top], color="0.5", linestyle=":", label="y = x (kept up)")
    kept = [(o, a) for o, a, late in points if not late]
    late = [(o, a) for o, a, late in points if late]
    if kept:
        against.scatter(*zip(*kept, strict=True), label="interval")
    if late:
        against.scatter(*zip(*late, strict=True), color="red", label="interval behind (< 95 %)")
    if failing:
        against.scatter(
            [o for o, _ in failing],
            [a for _, a in failing],
            marker="x",
            s=80,
            color="black",
            zorder=4,
            label="interval with failed requests",
        )
    if series.target_per_s is not None and series.achieved_per_s is not None:
        against.scatter(
            [series.target_per_s],
            [series.achieved_per_s],
            marker="*",
            s=200,
            color="black",
            zorder=5,
            label="whole run",
        )
    against.set_xlim(0, top)
    against.set_ylim(0, top)
    against.set_xlabel("offered requests per second")
    against.set_ylabel("answered requests per second")
    against.set_title("answered against offered, per interval")
    against.grid(True, alpha=0.3)
    against.legend(loc="lower right", fontsize=8)
