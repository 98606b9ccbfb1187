"""When an induction head forms, read from a score measured at checkpoints through training.

Olsson et al. (2022) locate the induction phase change as the short stretch of training in which the
prefix-matching score jumps; Hernandez et al. (2022) report that repeated data damages induction heads.
A damage can be a weaker head at the end, or the same head formed later: these two statistics tell the
two apart on the checkpoints a run kept.

- `phase_change_step`: the first step at which the score reaches a threshold (0.3 by the convention of
  the induction probe), linearly interpolated between the two checkpoints around the crossing; None if it
  never does. Units: optimizer steps.
- `mean_score`: the area under the score-vs-step curve (trapezoids) divided by the span of steps — the
  score averaged over training, in the score's units (0..1 for prefix matching). A head formed later
  has a smaller mean score even when the final scores agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _checked(steps: Sequence[float], scores: Sequence[float]) -> list[tuple[float, float]]:
    if len(steps) != len(scores) or not steps:
        raise ValueError(f"need as many steps as scores, at least one (got {len(steps)} and {len(scores)})")
    pairs = sorted(zip(map(float, steps), map(float, scores), strict=True))
    if any(a[0] == b[0] for a, b in zip(pairs, pairs[1:])):
        raise ValueError("steps must be distinct")
    if not all(math.isfinite(s) for _, s in pairs):
        raise ValueError("scores must be finite")
    return pairs


def phase_change_step(
    steps: Sequence[float], scores: Sequence[float], threshold: float = 0.3
) -> float | None:
    """First step where the score reaches `threshold` (interpolated between checkpoints); None if never.

    A score already at the threshold at the first checkpoint gives that checkpoint's step: the crossing
    happened at or before it.
    """
    pairs = _checked(steps, scores)
    if pairs[0][1] >= threshold:
        return pairs[0][0]
    for (s0, v0), (s1, v1) in zip(pairs, pairs[1:]):
        if v1 >= threshold:
            return s0 + (threshold - v0) / (v1 - v0) * (s1 - s0)
    return None


def mean_score(steps: Sequence[float], scores: Sequence[float], start: float | None = None) -> float:
    """Score averaged over training: trapezoid area under score(step) from `start` (default: the first
    checkpoint; a score of 0 is assumed there when it precedes the first checkpoint, as for an untrained
    model's head) to the last checkpoint, divided by that span."""
    pairs = _checked(steps, scores)
    if start is not None:
        if start > pairs[0][0]:
            raise ValueError(f"start {start} is after the first checkpoint {pairs[0][0]}")
        if start < pairs[0][0]:
            pairs = [(float(start), 0.0), *pairs]
    if len(pairs) == 1:
        return pairs[0][1]
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(pairs, pairs[1:]))
    return area / (pairs[-1][0] - pairs[0][0])
