"""Ranks, Spearman's rho and percentile-bootstrap CIs against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from overtrain.analysis.stats import bootstrap_ci, rankdata, spearman, spearman_ci


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]
    assert rankdata([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]
    # row-wise on 2-D input
    assert rankdata([[2, 1, 2], [0, 0, 1]]).tolist() == [[2.5, 1.0, 2.5], [1.5, 1.5, 3.0]]


def test_spearman_with_ties_matches_hand_computation():
    # ranks of y = [1, 4, 2.5, 2.5, 5]; centred x ranks [-2,-1,0,1,2], centred y ranks [-2,1,-.5,-.5,2]:
    # rho = 6.5 / sqrt(10 * 9.5)
    rho = spearman([1, 2, 3, 4, 5], [1, 3, 2, 2, 5])
    assert rho == pytest.approx(6.5 / math.sqrt(95), abs=1e-15)


def test_spearman_extremes_and_invariance():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(10)))  # constant: no ranking to correlate
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_ci_over_groups_and_pairs():
    x = np.arange(8.0)
    rng = np.random.default_rng(0)
    groups = x + rng.normal(0, 0.5, size=(6, 8))
    est = spearman_ci(x, groups, n_boot=500, seed=1)
    assert est.value == pytest.approx(spearman(x, groups.mean(axis=0)))
    assert est.low <= est.value <= est.high <= 1.0
    assert est.n_groups == 6 and not est.degenerate
    per = spearman_ci(x, groups, n_boot=500, seed=1, of="mean_rho")
    assert per.value == pytest.approx(np.mean([spearman(x, g) for g in groups]))
    pairs = spearman_ci(x, groups[0], n_boot=500, seed=1)  # one curve: resample (x, y) pairs
    assert pairs.low <= pairs.value <= pairs.high
    single = spearman_ci(x, groups[:1], n_boot=500)
    assert single.degenerate and single.low == single.value == single.high


def test_bootstrap_ci_of_mean_covers_and_is_seeded():
    rng = np.random.default_rng(3)
    values = rng.normal(2.0, 1.0, size=40)
    a = bootstrap_ci(values, np.mean, n_boot=1000, seed=7)
    b = bootstrap_ci(values, np.mean, n_boot=1000, seed=7)
    assert a == b
    assert a.value == pytest.approx(values.mean())
    # the percentile CI of a mean is close to mean +- 1.96 s / sqrt(n)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert a.high - a.low == pytest.approx(2 * half, rel=0.15)
    assert a.covers(2.0)


def test_bootstrap_ci_single_value_is_degenerate():
    est = bootstrap_ci([3.0], np.mean)
    assert est.degenerate and est.n_boot == 0 and (est.low, est.value, est.high) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], np.mean, level=1.5)
