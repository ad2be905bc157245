"""The report's figures: accuracy, loss, slowdown and bytes per round, as PNG.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (the
Agg backend, without selecting it globally), never through pyplot: pyplot
keeps global state and picks a GUI backend, and the report is also written
inside a Prefect flow run in a headless process.

Same runs → byte-identical PNGs: fixed size, dpi and style (the default
style overrides whatever a user's matplotlibrc says), levels in a fixed order, and no
"Software" version stamp in the PNG metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rc_context, style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PLOTS", "LevelSeries", "write_plots"]

# File name → caption, in the order the report shows them.
PLOTS: dict[str, str] = {
    "accuracy.png": "Test accuracy per round",
    "loss.png": "Loss per round (train and test)",
    "slowdown.png": "Slowdown vs the centralized baseline (1× = baseline)",
    "bytes.png": "Bytes communicated per round",
}
_SIZE = (8.0, 4.5)  # inches; x _DPI = 800 x 450 pixels
_DPI = 100


@dataclass(frozen=True)
class LevelSeries:
    """One level's per-round curves (index i = round i + 1) and its slowdown."""

    label: str
    rounds: Sequence[int]
    test_accuracy: Sequence[float]
    test_loss: Sequence[float]
    train_loss: Sequence[float]
    bytes_per_round: Sequence[float]
    slowdown: float | None


def write_plots(levels: Sequence[LevelSeries], out_dir: Path) -> dict[str, Path]:
    """Draw every figure of ``PLOTS`` into ``out_dir``; returns name → path.

    Levels come in the report's order; their colours follow that order, so the
    same level has the same colour in every figure.
    """
    drawers = {
        "accuracy.png": _accuracy,
        "loss.png": _loss,
        "slowdown.png": _slowdown,
        "bytes.png": _bytes,
    }
    paths: dict[str, Path] = {}
    colours = _colours(levels)
    with (
        style.context("default"),
        rc_context({"font.size": 9.0, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8}),
    ):
        for name in PLOTS:
            figure = Figure(figsize=_SIZE, dpi=_DPI)
            FigureCanvasAgg(figure)
            drawers[name](figure, levels, colours)
            figure.tight_layout()
            paths[name] = out_dir / name
            # Software=None drops matplotlib's version stamp, so PNG bytes depend
            # only on the data; PNGs carry no creation time by default.
            figure.savefig(paths[name], format="png", dpi=_DPI, metadata={"Software": None})
    return paths


def _colours(levels: Sequence[LevelSeries]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {series.label: palette[i % len(palette)] for i, series in enumerate(levels)}


# Levels often train the same model (2, 3, 4, 5 agree to float rounding), so
# their curves overlap: a marker per level keeps each one visible.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _with_rounds(levels: Sequence[LevelSeries]) -> list[LevelSeries]:
    """Levels that have per-round metrics (encrypted-eval has none)."""
    return [series for series in levels if series.rounds]


def _finish_rounds(axes: Axes, ylabel: str, levels: Sequence[LevelSeries]) -> None:
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    rounds = sorted({r for series in levels for r in series.rounds})
    if rounds:
        axes.set_xticks(rounds if len(rounds) <= 20 else rounds[:: len(rounds) // 10])
    if levels:
        axes.legend(loc="best")
    else:
        _nothing(axes)


def _line(
    axes: Axes, series: LevelSeries, values: Sequence[float], colours: Mapping[str, str]
) -> None:
    colour = colours[series.label]
    marker = _MARKERS[list(colours).index(series.label) % len(_MARKERS)]
    axes.plot(series.rounds, values, marker=marker, label=series.label, color=colour, alpha=0.85)


def _nothing(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def _accuracy(figure: Figure, levels: Sequence[LevelSeries], colours: Mapping[str, str]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    shown = _with_rounds(levels)
    for series in shown:
        percent = [100.0 * a for a in series.test_accuracy]
        axes.plot(
            series.rounds, percent, marker="o", label=series.label, color=colours[series.label]
        )
    axes.set_title(PLOTS["accuracy.png"])
    _finish_rounds(axes, "test accuracy (%)", shown)


def _loss(figure: Figure, levels: Sequence[LevelSeries], colours: Mapping[str, str]) -> None:
    shown = _with_rounds(levels)
    for index, (field, title) in enumerate((("train_loss", "train"), ("test_loss", "test"))):
        axes = figure.add_subplot(1, 2, index + 1)
        for series in shown:
            values = getattr(series, field)
            axes.plot(
                series.rounds, values, marker="o", label=series.label, color=colours[series.label]
            )
        axes.set_title(f"{title} loss")
        _finish_rounds(axes, f"{title} loss", shown)


def _slowdown(figure: Figure, levels: Sequence[LevelSeries], colours: Mapping[str, str]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    shown = [series for series in levels if series.slowdown is not None]
    labels = [series.label for series in shown]
    values = [float(series.slowdown or 0.0) for series in shown]
    bars = axes.bar(labels, values, color=[colours[label] for label in labels])
    axes.bar_label(bars, labels=[f"{v:.2f}×" for v in values], padding=2)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="baseline (1×)")
    axes.set_ylabel("training seconds / baseline's")
    axes.set_title(PLOTS["slowdown.png"])
    axes.set_ylim(0.0, max([1.0, *values]) * 1.15)
    axes.tick_params(axis="x", labelrotation=20)
    axes.legend(loc="upper left")
    if not shown:
        _nothing(axes)


def _bytes(figure: Figure, levels: Sequence[LevelSeries], colours: Mapping[str, str]) -> None:
    axes = figure.add_subplot(1, 1, 1)
    shown = _with_rounds(levels)
    for series in shown:
        megabytes = [b / 1e6 for b in series.bytes_per_round]
        axes.plot(
            series.rounds, megabytes, marker="o", label=series.label, color=colours[series.label]
        )
    axes.set_title(PLOTS["bytes.png"])
    _finish_rounds(axes, "MB sent + received", shown)
