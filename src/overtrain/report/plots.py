"""Figure helpers shared by report sections (matplotlib, Agg backend, one consistent look)."""

from __future__ import annotations


def new_figure(ncols: int = 1, *, width: float = 5.2, height: float = 3.6):
    """A figure with `ncols` axes side by side (returns ``(fig, axes_list)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    for ax in axes[0]:
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    return fig, list(axes[0])


def label(ax, x: str, y: str, title: str | None = None) -> None:
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=11)
