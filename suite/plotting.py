"""One figure style for every report: labelled axes, IQM lines with shaded 95% CIs, a fixed palette."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000", "#999999"]
RC = {
    "figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "lines.linewidth": 1.6,
}


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 2.7) -> tuple[Figure, list[Axes]]:
    """A figure with `nrows × ncols` axes in the suite's style; axes returned as a flat list."""
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
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
    """Draw one IQM line with a shaded 95% CI per variant (columns: variant, x, iqm, lo, hi)."""
    palette = palette or colors(order)
    for variant in order:
        c = curves[curves.variant == variant].sort_values(x)
        if c.empty:
            continue
        ax.plot(c[x], c.iqm, color=palette[variant], label=variant)
        ax.fill_between(c[x], c.lo, c.hi, color=palette[variant], alpha=0.2, linewidth=0)


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
