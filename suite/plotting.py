"""One figure style for every report: labelled axes, IQM lines with shaded 95% CIs, a fixed palette."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000", "#999999"]
RC = {
    "figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "lines.linewidth": 1.6,
}


class SuiteFigure(Figure):
    """A figure that can always be drawn. A panel whose every value is NaN (every run of its cells failed) can leave a log
    axis with limits that are not positive, which matplotlib refuses to draw ("Data cannot be log-scaled"); before drawing,
    such an axis gets positive limits (`_settle_log_axis`). A panel with data keeps the limits matplotlib gives it."""

    def draw(self, renderer):
        for ax in self.axes:
            _settle_log_axis(ax, "x")
            _settle_log_axis(ax, "y")
        super().draw(renderer)


def _settle_log_axis(ax: Axes, which: str) -> None:
    """Give a log axis without positive limits the span of the panel's positive positions on it (or 1–10)."""
    scale, get_lim, set_lim = ((ax.get_xscale, ax.get_xlim, ax.set_xlim) if which == "x" else
                               (ax.get_yscale, ax.get_ylim, ax.set_ylim))
    if scale() != "log":
        return
    lo, hi = get_lim()
    if np.isfinite(lo) and np.isfinite(hi) and lo > 0 and hi > 0:
        return
    values = []
    for line in ax.get_lines():
        try:
            values.append(np.asarray(line.get_xdata() if which == "x" else line.get_ydata(), dtype=float).ravel())
        except (TypeError, ValueError):  # not numbers (categories, dates): no position on a log axis
            continue
    values = np.concatenate(values) if values else np.empty(0)
    values = values[np.isfinite(values) & (values > 0)]
    set_lim((values.min() / 1.5, values.max() * 1.5) if values.size else (1.0, 10.0))


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 2.7) -> tuple[Figure, list[Axes]]:
    """A figure with `nrows × ncols` axes in the suite's style; axes returned as a flat list."""
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained",
                                 FigureClass=SuiteFigure)
    for ax in axes.flat:
        for key, value in RC.items():
            if key.startswith("axes.grid"):
                ax.grid(value, alpha=RC["grid.alpha"])
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes.flat)


def colors(labels: list[str]) -> dict[str, str]:
    """A stable colour per label, in the order given."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def ci_lines(ax: Axes, curves: pd.DataFrame, order: list[str], *, x: str = "step", palette: dict[str, str] | None = None) -> None:
    """Draw one IQM line with a shaded 95% CI per variant (columns: variant, x, iqm, lo, hi). A frame without rows or
    columns (no run logged the metric: every run failed) draws nothing but a "no data" note."""
    if curves is None or curves.empty or not {"variant", x, "iqm", "lo", "hi"} <= set(curves.columns):
        no_data(ax)
        return
    palette = palette or colors(order)
    for variant in order:
        c = curves[curves.variant == variant].sort_values(x)
        if c.empty:
            continue
        ax.plot(c[x], c.iqm, color=palette[variant], label=variant)
        ax.fill_between(c[x], c.lo, c.hi, color=palette[variant], alpha=0.2, linewidth=0)


def no_data(ax: Axes, text: str = "no data (every run failed or diverged)") -> None:
    """Say on an empty panel that it has no data, so a blank panel is never mistaken for a drawing error."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=RC["font.size"], color="grey")


def legend_below(fig: Figure, axes: list[Axes], ncol: int | None = None, title: str | None = None) -> None:
    """One legend for the whole figure, below the panels (never over data), built from every panel's labelled
    artists without duplicates. Use instead of `ax.legend()`."""
    handles, labels = [], []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels and not l.startswith("_"):
                handles.append(h)
                labels.append(l)
    if not handles:
        return
    ncol = ncol or min(len(labels), 6)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, title=title,
               title_fontsize=RC["legend.fontsize"])


MAX_SERIES = 6
"""At most this many series on one axes; split the panels otherwise (a reader cannot tell more colours apart)."""
