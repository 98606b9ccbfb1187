"""LR schedules and budget arithmetic against their closed forms."""

from __future__ import annotations

import math

import pytest

from overtrain.errors import ConfigError
from overtrain.training.schedules import cosine, linear_decay, log_spaced_steps, plan_budgets, warmup_stable


def test_warmup_then_constant():
    lr = warmup_stable(1.0, 4)
    assert [lr(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decay_ends_at_min_on_last_step():
    lr = linear_decay(warmup_stable(1.0, 0), start=10, length=4, min_lr=0.2)
    assert lr(9) == 1.0
    assert [round(lr(s), 10) for s in range(10, 14)] == [0.8, 0.6, 0.4, 0.2]


def test_cosine_hits_peak_and_floor():
    lr = cosine(1.0, warmup=2, total=12, min_lr=0.1)
    assert lr(0) == 0.5 and lr(1) == 1.0
    assert lr(11) == pytest.approx(0.1)
    assert lr(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))


def test_wsd_budgets_branch_off_the_main_line():
    budgets = plan_budgets([1000, 2000, 4000], tokens_per_step=100, schedule="wsd", decay_fraction=0.1)
    assert [(b.steps, b.branch, b.decay) for b in budgets] == [(10, 9, 1), (20, 18, 2), (40, 36, 4)]
    assert [b.name for b in budgets] == ["budget_1000", "budget_2000", "budget_4000"]


def test_budgets_that_collide_are_refused():
    with pytest.raises(ConfigError, match="both round to 1 steps"):
        plan_budgets([100, 120], tokens_per_step=100, schedule="wsd", decay_fraction=0.1)


def test_log_spaced_steps_are_pythia_like():
    assert log_spaced_steps(20) == [0, 1, 2, 4, 8, 16]
    assert log_spaced_steps(25, every=10, include_zero=False) == [1, 2, 4, 8, 10, 16, 20]
