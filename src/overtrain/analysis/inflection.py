"""The inflection point of catastrophic overtraining: the budget that minimises a loss curve, with a CI.

Given a grid of pre-training budgets T_1 < ... < T_P (tokens or steps) and, per group g (a seed, or a
noise draw shared by every budget), a loss curve L_g(T_p) — the pre-training loss after fine-tuning, or
the perturbed loss — the inflection point is

    T* = argmin_p  mean_g L_g(T_p),

the budget past which more pre-training makes the measured loss worse. Its uncertainty comes from the
groups: resample G groups with replacement, recompute the argmin of the resampled mean curve, and take
the percentile interval of the replicates' T* (in log T: budgets are log-spaced). Because every
replicate's T* is a budget of the grid, the CI endpoints are grid budgets too (lower and upper order
statistics, which is the same in log and linear space).

``method="quadratic"`` refines T* off the grid: the vertex of the parabola in log T through the argmin
and its two neighbours (exact for a curve quadratic in log T), applied to every replicate as well; an
argmin at an edge stays at the edge. Its CI endpoints are interpolated quantiles of log T*.

``interior`` is the paper's qualitative claim: the minimum lies strictly inside the grid (a U, not a
monotone curve), and ``rise`` = L(T_P)/L(T*) − 1 says how much worse the largest budget is. Judge a U
by both (`Inflection.is_u`): a curve that falls and then stays flat has its argmin wherever rounding
puts it along the plateau.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from overtrain.analysis.claims import MIN_SEEDS as MIN_GROUPS_FOR_CI


@dataclass(frozen=True)
class Inflection:
    """The minimiser of a mean loss curve over budgets, with a bootstrap CI over groups.

    Attributes:
        t_star: T*, the budget (units of the input grid) minimising the mean curve (the parabola vertex
            for ``method="quadratic"``).
        ci_low: lower end of the CI of T* (a grid budget for ``method="argmin"``).
        ci_high: upper end of the CI of T*.
        level: nominal coverage of the CIs.
        index: grid index of the mean curve's argmin.
        interior: True when that argmin is strictly inside the grid (neither first nor last budget).
        rise: L(last budget) / L(grid minimum) − 1 on the mean curve (0 when the argmin is the last budget).
        rise_ci_low: lower end of the bootstrap CI of `rise`.
        rise_ci_high: upper end of the bootstrap CI of `rise`.
        min_loss: the mean curve at its argmin.
        final_loss: the mean curve at the last budget.
        interior_fraction: share of bootstrap replicates whose argmin is interior (NaN when degenerate).
        agreement: share of replicates whose argmin is the same grid budget as the estimate (NaN when
            degenerate).
        n_groups: number of groups (curves) averaged and resampled.
        n_boot: bootstrap replicates (0 when degenerate).
        method: ``argmin`` or ``quadratic``.
        degenerate: True with a single group: nothing to resample, so every CI is the point itself.
        note: a plain-language remark (why the CI is degenerate, or that T* is at an edge); "" if none.
    """

    t_star: float
    ci_low: float
    ci_high: float
    level: float
    index: int
    interior: bool
    rise: float
    rise_ci_low: float
    rise_ci_high: float
    min_loss: float
    final_loss: float
    interior_fraction: float
    agreement: float
    n_groups: int
    n_boot: int
    method: str
    degenerate: bool
    note: str = ""

    def covers(self, t: float) -> bool:
        """Whether budget `t` lies in [ci_low, ci_high]."""
        return self.ci_low <= t <= self.ci_high

    def is_u(self, min_rise: float = 0.0) -> bool:
        """A U: the minimum is interior *and* the last budget is more than `min_rise` above it.

        `interior` alone is not enough: a curve that falls and then stays flat (a converged model)
        has its argmin wherever rounding puts it along the plateau, often inside the grid, with
        ``rise`` ~ 0.
        """
        return self.interior and self.rise > min_rise


def _as_groups(losses_by_group) -> np.ndarray:
    if isinstance(losses_by_group, Mapping):
        losses_by_group = list(losses_by_group.values())
    arr = np.asarray(losses_by_group, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"losses_by_group must be one curve or [groups, budgets], got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("losses_by_group contains NaN (a missing measurement); drop that group or budget")
    return arr


def parabola_vertex(x, f) -> np.ndarray:
    """The x of the vertex of the parabola through three points (x0, f0), (x1, f1), (x2, f2).

    Vectorised over leading dims: `x` and `f` are [..., 3]. Used with x = log T around a discrete
    minimum (f1 <= f0, f2), where the vertex lies in [x0, x2]. Collinear (flat) points give x1.
    """
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    f0, f1, f2 = f[..., 0], f[..., 1], f[..., 2]
    num = (x1 - x0) ** 2 * (f1 - f2) - (x1 - x2) ** 2 * (f1 - f0)
    den = (x1 - x0) * (f1 - f2) - (x1 - x2) * (f1 - f0)
    ok = np.isfinite(den) & (den != 0)
    return np.where(ok, x1 - 0.5 * num / np.where(ok, den, 1.0), x1)


def _argmins(curves: np.ndarray) -> np.ndarray:
    # np.argmin takes the first of tied minima: the earliest budget, the conservative T*
    return np.argmin(curves, axis=-1)


def _t_star(log_t: np.ndarray, curves: np.ndarray, idx: np.ndarray, method: str) -> np.ndarray:
    """log T* per curve: the grid argmin, or the parabola vertex around an interior argmin."""
    out = log_t[idx].astype(np.float64)
    if method == "quadratic":
        P = log_t.size
        rows = np.flatnonzero((idx > 0) & (idx < P - 1))
        if rows.size:
            cols = idx[rows, None] + np.arange(-1, 2)  # [n, 3]: the argmin and its two neighbours
            out[rows] = parabola_vertex(log_t[cols], curves[rows[:, None], cols])
    return out


def _rise(curves: np.ndarray, idx: np.ndarray) -> np.ndarray:
    mins = np.take_along_axis(curves, idx[:, None], axis=1)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return curves[:, -1] / mins - 1.0


def inflection_point(
    tokens: Sequence[float],
    losses_by_group,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    method: Literal["argmin", "quadratic"] = "argmin",
) -> Inflection:
    """T* = argmin over budgets of the mean loss curve, with a percentile-bootstrap CI over groups.

    Args:
        tokens: [P] budgets (tokens or steps), strictly increasing and positive.
        losses_by_group: [G, P] one loss curve per group (seed, or a noise draw shared by all budgets),
            a mapping group -> curve, or a single [P] curve (G = 1: degenerate CI).
        n_boot: bootstrap replicates (resampling G groups with replacement).
        seed: seed of the resampling.
        level: nominal coverage of the CIs (0.95).
        method: ``argmin`` (T* on the grid) or ``quadratic`` (parabola vertex in log T around it).

    Returns:
        An `Inflection`.
    """
    if method not in ("argmin", "quadratic"):
        raise ValueError(f"method must be 'argmin' or 'quadratic', got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    t = np.asarray(tokens, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError("tokens must be a 1-D grid of at least 2 budgets")
    if not (np.all(t > 0) and np.all(np.diff(t) > 0)):
        raise ValueError("tokens must be positive and strictly increasing")
    curves = _as_groups(losses_by_group)
    G, P = curves.shape
    if P != t.size:
        raise ValueError(f"each curve has {P} points but there are {t.size} budgets")
    log_t = np.log(t)

    mean = curves.mean(axis=0, keepdims=True)
    idx = _argmins(mean)
    index = int(idx[0])
    # on the grid, report the budget itself (exp(log t) is not always t to the last bit)
    t_star = float(t[index]) if method == "argmin" else float(np.exp(_t_star(log_t, mean, idx, method)[0]))
    rise = float(_rise(mean, idx)[0])
    interior = 0 < index < P - 1
    notes = []
    if not interior:
        notes.append(f"the minimum is at the {'first' if index == 0 else 'last'} budget: no interior U")

    if G < 2:
        notes.insert(0, "single group: nothing to resample, the CI is the point estimate")
        return Inflection(
            t_star,
            t_star,
            t_star,
            level,
            index,
            interior,
            rise,
            rise,
            rise,
            float(mean[0, index]),
            float(mean[0, -1]),
            float("nan"),
            float("nan"),
            G,
            0,
            method,
            True,
            "; ".join(notes),
        )

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, G, size=(n_boot, G))
    # mean curve of each replicate: a [n_boot, G] x [G, P] product via counts is cheaper than indexing
    counts = np.zeros((n_boot, G))
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    boot = counts @ curves / G
    b_idx = _argmins(boot)
    b_log_t = _t_star(log_t, boot, b_idx, method) if method == "quadratic" else None
    b_rise = _rise(boot, b_idx)
    alpha = (1 - level) / 2
    if method == "argmin":
        # order statistics of the replicates' grid indices: the CI ends are budgets of the grid
        lo = t[int(np.quantile(b_idx, alpha, method="lower"))]
        hi = t[int(np.quantile(b_idx, 1 - alpha, method="higher"))]
    else:
        lo, hi = np.exp(np.quantile(b_log_t, [alpha, 1 - alpha]))
    finite_rise = b_rise[np.isfinite(b_rise)]
    r_lo, r_hi = np.quantile(finite_rise, [alpha, 1 - alpha]) if finite_rise.size else (np.nan, np.nan)
    return Inflection(
        t_star=t_star,
        ci_low=float(lo),
        ci_high=float(hi),
        level=level,
        index=index,
        interior=interior,
        rise=rise,
        rise_ci_low=float(r_lo),
        rise_ci_high=float(r_hi),
        min_loss=float(mean[0, index]),
        final_loss=float(mean[0, -1]),
        interior_fraction=float(np.mean((b_idx > 0) & (b_idx < P - 1))),
        agreement=float(np.mean(b_idx == index)),
        n_groups=G,
        n_boot=n_boot,
        method=method,
        degenerate=False,
        note="; ".join(notes),
    )


def bracket(grid: Sequence[float], index: int) -> tuple[float | None, float | None]:
    """The budgets either side of grid point `index`: an argmin on a grid says only that the curve's
    minimum lies between its neighbours (None beyond an edge of the grid)."""
    lo = float(grid[index - 1]) if index > 0 else None
    hi = float(grid[index + 1]) if index + 1 < len(grid) else None
    return lo, hi


def between_budgets(grid: Sequence[float], index: int) -> str:
    """ "the minimum lies between the budgets A and B" for grid point `index` ("" at an edge of the grid)."""
    lo, hi = bracket(grid, index)
    return "" if lo is None or hi is None else f"the minimum lies between the budgets {lo:,.0f} and {hi:,.0f}"


def describe_t_star(
    inf: Inflection, grid: Sequence[float], unit: str = "tokens", groups: str = "seeds"
) -> str:
    """T* in words at the precision the grid supports: the budget where the mean curve is lowest, the
    neighbouring budgets that bracket the minimum, and the spread over `groups` — a bootstrap CI with at
    least `MIN_GROUPS_FOR_CI` of them, otherwise called what it is (the range over so few)."""
    lo, hi = bracket(grid, inf.index)
    at = f"{inf.t_star:,.0f}"
    if lo is None or hi is None:
        text = f"lowest at the {'first' if lo is None else 'last'} budget measured ({at} {unit}): no interior minimum"
    else:
        text = f"lowest at the budget of {at} {unit}: {between_budgets(grid, inf.index)}"
    if inf.degenerate or inf.n_groups < 2:
        return text
    span = (
        f"budget {inf.ci_low:,.0f}"
        if inf.ci_low == inf.ci_high
        else f"budgets {inf.ci_low:,.0f} to {inf.ci_high:,.0f}"
    )
    if inf.n_groups >= MIN_GROUPS_FOR_CI:
        return f"{text}; {inf.level:.0%} bootstrap CI over {inf.n_groups} {groups}: {span}"
    return f"{text}; over {inf.n_groups} {groups} (a range, too few for a CI): {span}"
