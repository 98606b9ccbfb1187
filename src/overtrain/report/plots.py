"""Figure helpers shared by report sections (matplotlib, Agg backend, one consistent look)."""

from __future__ import annotations

import numpy as np


def new_figure(ncols: int = 1, *, width: float = 5.2, height: float = 3.6, per_row: int = 4):
    """A figure with `ncols` panels, `per_row` to a row (returns ``(fig, axes_list)``, in reading order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = min(ncols, per_row), -(-ncols // per_row)
    # constrained layout places labels at draw time, so panels of several rows do not overlap
    fig, grid = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        layout="constrained" if rows > 1 else None,
    )
    axes = list(grid.flat)
    for ax in axes[ncols:]:
        ax.set_visible(False)
    for ax in axes[:ncols]:
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    return fig, axes[:ncols]


def label(ax, x: str, y: str, title: str | None = None) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=11)


def compact(value: float) -> str:
    """``2000000`` -> ``2M``: a count in k/M/B/T with up to three significant digits."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def log_x(ax, ticks=None) -> None:
    """Log x axis; with `ticks` (e.g. the checkpoints' token counts), labelled exactly there, compactly
    (matplotlib's own minor labels collide when the data span less than a decade)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    if ticks is not None:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(float(t) for t in ticks))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: compact(v)))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def log_y(ax, n_ticks: int = 5) -> None:
    """Log y axis whose ticks are labelled even when the data span less than a decade (call after plotting).

    Matplotlib labels only powers of ten, so a view holding fewer than two of them (a curve between 0.2
    and 0.9, or 0.15 and 1.6) shows one number or none;
    there we place up to `n_ticks` ticks at round values (1-2-5 steps, finer when the span is narrow)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_yscale("log")
    # the view, not the data limits: a band reaching 0 puts 0 in the data limits, which a log axis drops
    lo, hi = ax.get_ylim()
    decades = np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) + 1 if 0 < lo < hi else 0
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi) or decades >= 2:
        ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels collide with the axis label
        return
    # 1-2-5 steps first (round numbers read at a glance), finer mantissas only when they give too few ticks
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [
            m * 10.0**k
            for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
            for m in mantissas
            if lo <= m * 10.0**k <= hi
        ]
        if len(ticks) >= min(3, n_ticks):
            break
    if len(ticks) > n_ticks:
        ticks = ticks[:: -(-len(ticks) // n_ticks)]
    if len(ticks) < 2:  # a span of a few percent: evenly spaced ticks at three significant digits
        ticks = sorted({float(f"{v:.3g}") for v in np.geomspace(lo, hi, n_ticks)})
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
