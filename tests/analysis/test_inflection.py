"""Inflection point: argmin of the mean curve with a bootstrap CI over groups, on synthetic curves."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.analysis.inflection import bracket, describe_t_star, inflection_point, parabola_vertex

BUDGETS = np.logspace(2, 5, 13)  # 100 .. 1e5, four per decade (the linear theory grid)
LOG10 = np.log10(BUDGETS)


def u_curve(x0: float) -> np.ndarray:
    """A U in log T with its minimum at log10 T = x0: 1 + 0.2 (log10 T - x0)^2."""
    return 1.0 + 0.2 * (LOG10 - x0) ** 2


def test_noiseless_u_is_found_exactly():
    curves = np.tile(u_curve(3.25), (4, 1))
    inf = inflection_point(BUDGETS, curves, n_boot=200, seed=0)
    assert inf.index == 5 and inf.t_star == BUDGETS[5]
    assert inf.interior and inf.ci_low == inf.ci_high == BUDGETS[5]
    assert inf.rise == pytest.approx(0.2 * (5 - 3.25) ** 2)
    assert inf.agreement == 1.0 and inf.interior_fraction == 1.0


def test_ci_covers_true_argmin_in_most_replications():
    """Coverage of the 95% CI over 50 seeded replications of 8 noisy curves each.

    Noise sd 0.05 per point (0.018 on a mean of 8) against a 0.0125 gap between the minimum and its
    neighbours, so the point estimate misses the true budget often — the CI has work to do. Measured:
    the point estimate misses in 23/50 replications and the CI covers 50/50 (99.5% over 200; the CI
    ends are grid budgets, which makes it conservative). 0.8 is the threshold: under the nominal 0.95, 40 or fewer
    hits out of 50 has probability 1.6e-4, so a failure means real under-coverage, not bad luck.
    """
    true = BUDGETS[int(np.argmin(u_curve(3.25)))]
    hits, misses = 0, 0
    for rep in range(50):
        rng = np.random.default_rng(rep)
        curves = u_curve(3.25) + 0.05 * rng.standard_normal((8, BUDGETS.size))
        inf = inflection_point(BUDGETS, curves, n_boot=1000, seed=rep)
        hits += inf.covers(true)
        misses += inf.t_star != true
    assert misses >= 10, "the point estimate is almost always right: the test would not test the CI"
    assert hits / 50 >= 0.8


def test_quadratic_variant_recovers_off_grid_minimum_and_covers_it():
    x0 = 3.1  # between the grid points 10^3 and 10^3.25
    exact = inflection_point(BUDGETS, u_curve(x0), method="quadratic")
    assert np.log10(exact.t_star) == pytest.approx(x0, abs=1e-9)  # exact for a quadratic in log T
    assert exact.degenerate and exact.ci_low == exact.ci_high == exact.t_star
    # coverage as above: measured 45/50 (0.93 over 200 replications) — interpolated quantiles, so
    # none of the grid's slack; the same 0.8 threshold (P(<= 40/50) = 0.2% at a true 0.93)
    hits = 0
    for rep in range(50):
        rng = np.random.default_rng(1000 + rep)
        curves = u_curve(x0) + 0.05 * rng.standard_normal((8, BUDGETS.size))
        hits += inflection_point(BUDGETS, curves, n_boot=1000, seed=rep, method="quadratic").covers(10**x0)
    assert hits / 50 >= 0.8


def test_parabola_vertex_vectorised():
    x = np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 4.0]])
    f = (x - np.array([[0.7], [2.5]])) ** 2
    assert parabola_vertex(x, f).tolist() == pytest.approx([0.7, 2.5])
    assert parabola_vertex([0.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 1.0  # flat: the middle point


def test_monotone_curves_have_their_minimum_at_an_edge():
    rng = np.random.default_rng(0)
    falling = 2.0 - 0.1 * LOG10 + 0.001 * rng.standard_normal((5, BUDGETS.size))
    inf = inflection_point(BUDGETS, falling, n_boot=500)
    assert inf.index == BUDGETS.size - 1 and not inf.interior and inf.rise == 0.0
    assert inf.ci_low == inf.ci_high == BUDGETS[-1] and inf.interior_fraction == 0.0
    assert "last budget" in inf.note
    rising = 1.0 + 0.1 * LOG10
    first = inflection_point(BUDGETS, [rising, rising + 0.01], n_boot=100)
    assert first.index == 0 and not first.interior and first.rise > 0


def test_flat_tail_is_interior_but_not_a_u():
    # falls, then a plateau with rounding-level wiggles (a converged model): argmin inside, no rise
    plateau = np.maximum(2.0 - 0.5 * LOG10, 0.5) + 1e-15 * np.sin(np.arange(BUDGETS.size))
    inf = inflection_point(BUDGETS, plateau)
    assert inf.interior and inf.rise < 1e-12
    assert not inf.is_u(min_rise=1e-9)
    assert inflection_point(BUDGETS, u_curve(3.0)).is_u(min_rise=0.05)


def test_single_group_is_degenerate_and_says_so():
    inf = inflection_point(BUDGETS, u_curve(4.0))
    assert inf.degenerate and inf.n_groups == 1 and inf.n_boot == 0
    assert inf.ci_low == inf.t_star == inf.ci_high == BUDGETS[8]
    assert np.isnan(inf.interior_fraction) and "single group" in inf.note


def test_inputs_are_checked_and_mappings_accepted():
    by_seed = {0: u_curve(3.0), 1: u_curve(3.0) + 0.01}
    assert inflection_point(BUDGETS, by_seed, n_boot=50).t_star == BUDGETS[4]
    with pytest.raises(ValueError, match="increasing"):
        inflection_point(BUDGETS[::-1], u_curve(3.0))
    with pytest.raises(ValueError, match="points"):
        inflection_point(BUDGETS[:-1], u_curve(3.0))
    with pytest.raises(ValueError, match="NaN"):
        inflection_point(BUDGETS, np.where(LOG10 > 4, np.nan, 1.0))


def test_t_star_is_described_at_the_grid_precision():
    """A grid argmin says only that the minimum lies between the neighbouring budgets; with 2 seeds the
    interval is their range, not a CI (the report used to print "~933,888 tokens [933,888, 933,888]")."""
    grid = [1e5, 2e5, 4e5, 8e5, 1.6e6]
    curve = np.array([3.0, 2.5, 2.2, 2.4, 2.6])
    two = inflection_point(grid, np.stack([curve, curve + 0.01]), n_boot=200)
    text = describe_t_star(two, grid)
    assert (
        "lowest at the budget of 400,000 tokens: the minimum lies between the budgets 200,000 and 800,000"
        in text
    )
    assert "over 2 seeds (a range, too few for a CI): budget 400,000" in text and "CI over" not in text
    rng = np.random.default_rng(0)
    four = inflection_point(grid, curve + 0.01 * rng.standard_normal((4, 5)), n_boot=200)
    assert "95% bootstrap CI over 4 seeds" in describe_t_star(four, grid)
    edge = inflection_point(grid, curve[::-1].copy() * 0 + np.arange(5), n_boot=10)
    assert "first budget measured (100,000 tokens): no interior minimum" in describe_t_star(edge, grid)
    assert bracket(grid, 0) == (None, 2e5) and bracket(grid, 4) == (8e5, None)
