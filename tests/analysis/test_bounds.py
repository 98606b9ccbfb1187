"""Shared one-sided bounds, the paired rule and the split-half peak, against closed forms and planted data."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from overtrain.analysis.bounds import (
    locate_peak,
    paired_calibration,
    paired_rule,
    split_peak,
    split_peak_calibration,
    t_lower,
    t_upper,
)
from overtrain.analysis.calibration import no_peak, planted_peak
from overtrain.analysis.rise import held_out_peak


def test_t_bounds_match_the_closed_form_and_need_four_replicates():
    x = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert math.isclose(t_lower(x), 3.0 - half) and math.isclose(t_upper(x), 3.0 + half)
    cols = t_lower(np.stack([x, 2 * x], axis=1))
    assert np.allclose(cols, [3.0 - half, 6.0 - 2 * half])
    assert t_lower(x[:3]) is None and t_lower([1.0, np.nan, 2.0, 3.0]) is None


def test_paired_rule_has_its_nominal_rate_and_finds_a_planted_shift():
    """Exchangeable pairs pass at the nominal 2.5% (± 3 Monte-Carlo SE at 4000 draws); a 1-SD shift with 10
    replicates passes most of the time."""
    rng = np.random.default_rng(0)
    cal = paired_calibration(rng.normal(0, 1, 10), effect=1.0, n_sim=4000)
    assert abs(cal.fpr - 0.025) < 3 * math.sqrt(0.025 * 0.975 / 4000) and cal.power > 0.7
    assert not paired_rule()(np.full((3, 1), 1.0))  # three replicates: no bound, no pass


def test_split_peak_finds_a_planted_peak_and_not_its_null():
    x = np.arange(9.0)
    null = no_peak(np.array([1.0, 0.8, 0.6, 0.5, 0.7, 0.45, 0.4, 0.35, 0.3]))
    rng = np.random.default_rng(2)
    noisy = lambda m: np.exp(np.log(m) + rng.normal(0, 0.05, size=(16, len(m))))  # noqa: E731
    assert split_peak(noisy(planted_peak(null, 0.5, 4)), x, 4, 0).passed
    assert not split_peak(noisy(null), x, 4, 0).passed
    assert not split_peak(noisy(planted_peak(null, 0.5, 6)), x, 4, 0).located  # a peak elsewhere
    cal = split_peak_calibration(noisy(null), x, 4, 0, height=0.3)
    assert cal.fpr <= 0.05 and cal.power >= 0.8
    assert locate_peak(np.log(planted_peak(null, 0.5, 4))) == (4, 3, 8)


def test_the_vectorised_held_out_peak_matches_the_definition():
    """Per seed: peak and valleys located on the mean of the other seeds (first maximum, first minima)."""
    rng = np.random.default_rng(1)
    for k in range(200):
        y = np.exp(rng.normal(size=(int(rng.integers(2, 9)), int(rng.integers(3, 20)))))
        if k % 3 == 0:
            y = np.round(y, 1) + 0.1  # ties
        held = held_out_peak(y)
        for s in range(y.shape[0]):
            m = np.delete(y, s, axis=0).mean(axis=0)
            ratio = [m[i] / max(m[:i].min(), m[i + 1 :].min()) for i in range(1, len(m) - 1)]
            i = 1 + int(np.argmax(ratio))
            left, right = int(np.argmin(m[:i])), i + 1 + int(np.argmin(m[i + 1 :]))
            assert held.peak_index[s] == i
            assert math.isclose(held.per_seed[s], y[s, i] / max(y[s, left], y[s, right]) - 1, rel_tol=1e-9)
