"""Learning-rate schedules and the arithmetic from token budgets to steps.

Every schedule is a pure function of the step index, so resuming needs no scheduler state. Step ``s``
(0-based) is the ``s+1``-th optimizer update; ``lr(s)`` is the rate it uses.

Two ways to reach many token budgets with one model family:

- **warmup-stable-decay (WSD)**: one main line warms up then holds the peak rate; for each budget ``T``
  a branch leaves the main line at ``P = S - D`` and decays linearly to ``min_lr`` over ``D`` steps,
  ending exactly at ``S`` steps (``T`` tokens). One run serves all budgets at cost
  ``P_max + sum(D_k)``, about ``(1 + 2f) T_max`` for doubling budgets and decay fraction ``f``.
- **cosine**: an independent run per budget, warmup then cosine to ``min_lr`` over its own length
  (faithful to a fixed-budget run, costs ``sum(S_k)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from overtrain.errors import ConfigError

LR = Callable[[int], float]


def steps_for_tokens(tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps that see closest to `tokens` tokens (at least one)."""
    return max(1, round(tokens / tokens_per_step))


def warmup_stable(peak: float, warmup: int) -> LR:
    """Linear warmup over `warmup` steps to `peak`, then constant."""

    def lr(step: int) -> float:
        return peak * (step + 1) / warmup if step < warmup else peak

    return lr


def linear_decay(base: LR, start: int, length: int, min_lr: float) -> LR:
    """`base` before `start`; from `start` a straight line from ``base(start)`` reaching `min_lr` at the
    last step ``start + length - 1``."""
    top = base(start)

    def lr(step: int) -> float:
        if step < start:
            return base(step)
        frac = min(1.0, (step - start + 1) / length)
        return top + (min_lr - top) * frac

    return lr


def cosine(peak: float, warmup: int, total: int, min_lr: float) -> LR:
    """Linear warmup, then half a cosine from `peak` to `min_lr` at the last step ``total - 1``."""
    span = max(1, total - warmup)

    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        frac = min(1.0, (step - warmup + 1) / span)
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return lr


@dataclass(frozen=True)
class Budget:
    """One token budget and where its trajectory branches.

    Attributes:
        tokens: the nominal budget asked for.
        steps: S, optimizer steps that reach it (``tokens_seen = steps * tokens_per_step``).
        branch: P, the main-line step where its decay starts (WSD); 0 for cosine, S for constant.
        decay: D = S - P, steps of its own decay (WSD), S (cosine) or 0 (constant).
    """

    tokens: int
    steps: int
    branch: int
    decay: int

    @property
    def name(self) -> str:
        return f"budget_{self.tokens}"


def plan_budgets(
    tokens: list[int], tokens_per_step: int, schedule: str, decay_fraction: float
) -> list[Budget]:
    """Budgets in increasing order with their step counts; two budgets on the same step count are an
    error (they would be the same checkpoint)."""
    budgets: list[Budget] = []
    seen: dict[int, int] = {}
    for t in sorted(set(tokens)):
        s = steps_for_tokens(t, tokens_per_step)
        if s in seen:
            raise ConfigError(
                f"train.tokens: budgets {seen[s]} and {t} both round to {s} steps of {tokens_per_step} tokens"
            )
        seen[s] = t
        if schedule == "wsd":
            d = min(s, max(1, round(decay_fraction * s)))
            budgets.append(Budget(t, s, s - d, d))
        elif schedule == "cosine":
            budgets.append(Budget(t, s, 0, s))
        else:
            budgets.append(Budget(t, s, s, 0))
    return budgets


def log_spaced_steps(last: int, every: int | None = None, include_zero: bool = True) -> list[int]:
    """Pythia-style checkpoint steps up to `last`: 0, 1, 2, 4, ..., then every `every` steps."""
    steps = {0} if include_zero else set()
    p = 1
    while p <= last:
        steps.add(p)
        p *= 2
    if every:
        steps.update(range(every, last + 1, every))
    return sorted(steps)
