"""Integer sweep grids dense around a threshold: the head widths p of head tuning (threshold p = n) and
the training-set sizes n of sample-wise linear regression (threshold n = d)."""

from __future__ import annotations

import math

import numpy as np


def dense_grid(lo: int, hi: int, center: int, points: int = 30) -> list[int]:
    """Integers in [lo, hi]: `points` log-spaced ones, every second integer in [0.8·center, 1.2·center],
    and lo, center and hi themselves (where in range), sorted and distinct."""
    grid = {int(round(v)) for v in np.geomspace(lo, hi, points)} if hi > lo else set()
    grid |= set(range(math.ceil(0.8 * center), math.floor(1.2 * center) + 1, 2))
    grid |= {lo, center, hi}
    return sorted(p for p in grid if lo <= p <= hi)
