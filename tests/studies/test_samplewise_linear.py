"""Sample-wise double descent of isotropic linear regression (Nakkiran et al. 2020 §6): the row-prefix
solver against ``np.linalg.lstsq``, the Monte Carlo risk against its closed form, the claims (decided from
the run's rows) and the config. The default config runs once per module (~0.3 s)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from overtrain.analysis.bounds import locate_peak, paired_rule, split_peak
from overtrain.analysis.calibration import no_peak, planted_peak
from overtrain.config import validate
from overtrain.errors import ConfigError
from overtrain.seed import numpy_rng
from overtrain.studies.samplewise_linear.analysis import claims
from overtrain.studies.samplewise_linear.calibrate import paired_calibration, split_peak_calibration
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig
from overtrain.studies.samplewise_linear.engine import (
    SamplewiseLinearResult,
    expected_risk,
    row_prefix_min_norm,
    run_samplewise_linear,
)


@pytest.fixture(scope="module")
def default() -> SamplewiseLinearResult:
    cfg = SamplewiseLinearConfig()
    assert (cfg.d, cfg.noise_std, cfg.trials) == (100, 0.5, 50)
    return run_samplewise_linear(cfg)


# --- the solver ----------------------------------------------------------------------------------------


def test_row_prefix_min_norm_equals_lstsq():
    """n < d, n = d and n > d, batched over 3 problems: coefficients, predictions and norms."""
    d = 20
    rng = numpy_rng("test", "row-prefix")
    x = rng.standard_normal((3, 60, d))
    y = rng.standard_normal((3, 60))
    ns = [1, 5, 19, 20, 21, 23, 40, 60]
    got = row_prefix_min_norm(x, y, ns)
    assert got.shape == (3, len(ns), d)
    for b in range(3):
        for g, n in enumerate(ns):
            ref = np.linalg.lstsq(x[b, :n], y[b, :n], rcond=None)[0]
            # n = d: a square design, whose condition number has the heaviest tail; the QR solve and the
            # SVD round differently and κ amplifies the difference, so the check there is looser.
            rtol = 1e-6 if n == d else 1e-8
            assert np.allclose(got[b, g], ref, rtol=rtol, atol=rtol * np.abs(ref).max()), (b, n)
            assert np.allclose(x[b, :n] @ got[b, g], x[b, :n] @ ref, rtol=rtol, atol=rtol)
            assert math.isclose(np.linalg.norm(got[b, g]), np.linalg.norm(ref), rel_tol=rtol)
    with pytest.raises(ValueError):
        row_prefix_min_norm(x, y, [61])


def test_training_sets_are_nested_and_grid_independent():
    """The first n examples of a trial do not depend on the rest of the grid: shared n give equal MSEs."""
    a = run_samplewise_linear(SamplewiseLinearConfig(d=20, n_grid=[10, 20, 30], trials=3))
    b = run_samplewise_linear(SamplewiseLinearConfig(d=20, n_grid=[10, 30, 80], trials=3))
    assert np.allclose(a.mse[:, [0, 2]], b.mse[:, [0, 1]], rtol=1e-10)


# --- the closed form -----------------------------------------------------------------------------------


def test_expected_risk_formula():
    assert expected_risk(200, 100, 0.5) == pytest.approx(0.25 * (1 + 100 / 99))
    assert expected_risk(50, 100, 0.5) == pytest.approx(0.5 + 0.25 * (1 + 50 / 49))
    assert expected_risk(0, 100, 0.5) == pytest.approx(1.25)  # no data: β̂ = 0, risk ‖β‖² + σ²
    for n in (99, 100, 101):
        assert expected_risk(n, 100, 0.5) == math.inf


def test_monte_carlo_mean_matches_closed_form():
    """Mean test MSE over 2,000 trials at d = 30 is within 4 standard errors of the closed form at n/d =
    0.2, 0.4, 0.67, 1.5, 2, 4. The n are kept ≥ 8 away from d: the risk's variance is finite only for
    |n − d| > 3 (inverse-Wishart second moments), and its tail is heavy just beyond that."""
    d, ns = 30, [6, 12, 20, 45, 60, 120]
    res = run_samplewise_linear(SamplewiseLinearConfig(d=d, n_grid=ns, trials=2000))
    mean = res.mse.mean(axis=0)
    se = res.mse.std(axis=0, ddof=1) / math.sqrt(res.mse.shape[0])
    z = np.abs(mean - res.expected()) / se
    assert z.max() < 4, dict(zip(ns, z.round(2)))


# --- the reference numbers at the defaults -------------------------------------------------------------------


def test_default_grid():
    ns = SamplewiseLinearConfig().ns()
    assert ns[0] == 10 and ns[-1] == 400
    assert {50, 90, 100, 110, 200, 400} <= set(ns)
    assert set(range(80, 121, 2)) <= set(ns)
    assert SamplewiseLinearConfig(n_grid=[30, 5]).ns() == [5, 30]


def test_default_reproduces_science_numbers(default):
    """The reference medians over 50 trials (docs/double_descent.md): 0.96 (n/d = 0.5), 2.47 (0.9), 50 (1.0), 2.67 (1.1), 0.50 (2),
    0.33 (4). Measured: 0.975, 2.46, 66.6, 2.97, 0.501, 0.330. The n = d median is the noisiest (the
    risk there has no finite mean), hence its wide band."""
    med = default.median()
    expected = {50: 0.96, 90: 2.47, 110: 2.67, 200: 0.50, 400: 0.33}
    for n, value in expected.items():
        assert med[default.at(n)] == pytest.approx(value, rel=0.2), n
    assert 20 < med[default.at(100)] < 300


def test_default_claims(default):
    hurts, peak = claims(SamplewiseLinearConfig(), default.rows())
    assert hurts.verdict == "PASS" and hurts.value > 10
    assert peak.verdict == "PASS" and peak.value == 100
    for c in (hurts, peak):  # calibrated findings: a measured fpr within 5%, and a power
        assert c.type == "finding" and c.fpr <= 0.05 and c.power is not None and "simulations" in c.detail


def test_claims_na_without_n_equal_d():
    cfg = SamplewiseLinearConfig(d=20, n_grid=[10, 30], trials=2)
    hurts, peak = claims(cfg, run_samplewise_linear(cfg).rows())
    assert hurts.verdict == "N/A"
    assert peak.verdict == "N/A"  # two sizes: no interior point to peak at


def test_few_trials_are_underpowered():
    """Six trials: the paired claim has its six replicates, the peak only three held-out trials — too few
    to PASS or FAIL."""
    cfg = SamplewiseLinearConfig(d=20, n_grid=[6, 10, 14, 18, 20, 22, 30, 60], trials=6)
    hurts, peak = claims(cfg, run_samplewise_linear(cfg).rows())
    assert hurts.verdict == "PASS"
    assert peak.verdict == "UNDERPOWERED" and "on 3 held-out trials" in peak.detail


# --- the decision rules on planted nulls and effects -----------------------------------------------------

NS = np.array([10, 20, 40, 60, 80, 90, 100, 110, 120, 150, 200, 400])
D = 6  # index of n = 100


def _risks(mean: np.ndarray, sigma: float, trials: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return mean * np.exp(rng.normal(0, sigma, size=(trials, len(mean))))


def test_locate_peak():
    m = np.log([3.0, 1.0, 2.0, 9.0, 4.0, 0.5, 0.7])
    assert locate_peak(m) == (3, 1, 5)


def test_split_peak_passes_a_planted_peak_and_fails_a_planted_null():
    null = no_peak(np.array([1.2, 1.0, 0.98, 1.0, 1.1, 1.3, 1.5, 1.2, 0.9, 0.6, 0.5, 0.33]))
    peaked = planted_peak(null, 0.5, D)
    for seed in range(3):
        assert split_peak(_risks(peaked, 0.1, seed=seed), NS, 100, 5).passed
        assert not split_peak(_risks(null, 0.1, seed=seed), NS, 100, 5).passed
    off = split_peak(_risks(planted_peak(null, 3.0, 9), 0.1), NS, 100, 5)  # a peak at n = 150
    assert off.lower > 0 and not off.located and not off.passed
    assert split_peak(_risks(peaked, 0.1, trials=6), NS, 100, 5).lower is None  # three held-out trials


def test_split_peak_calibration():
    risks = _risks(planted_peak(no_peak(np.linspace(1.0, 0.4, len(NS))), 5.0, D), 0.1, trials=30)
    cal = split_peak_calibration(risks, NS, 100, 5, height=0.5)
    assert cal.fpr <= 0.05 and cal.power >= 0.8 and cal.n_groups == 30
    assert split_peak_calibration(risks, NS, 100, 5, height=0.02).power < cal.power


def test_paired_rule_passes_a_planted_gap_and_fails_a_planted_null():
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert paired_rule()(rng.normal(np.log(1.5), 0.2, size=(20, 1)))
        assert not paired_rule()(rng.normal(0.0, 0.2, size=(20, 1)) - 0.05)
    cal = paired_calibration(rng.normal(0, 0.1, size=20), gap=0.2)
    assert cal.fpr <= 0.05 and cal.power >= 0.9


def test_rows(default):
    rows = default.rows()
    T, G = default.mse.shape
    risk = [r for r in rows if r["record"] == "risk"]
    expected = [r for r in rows if r["record"] == "expected"]
    assert len(risk) == T * G and len(expected) == G
    at_d = next(r for r in expected if r["n"] == 100)
    assert at_d["risk"] is None and at_d["n_over_d"] == 1.0
    assert risk[0]["risk"] == default.mse[0, 0]


# --- config --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"bogus": 1},
        {"d": -5},
        {"d": 1},
        {"trials": 0},
        {"noise_std": -0.1},
        {"n_grid": [0, 5]},
        {"n_grid": [5, 5]},
        {"n_grid": []},
        {"d": 5000, "trials": 1000},
    ],
)
def test_config_rejects(data):
    with pytest.raises(ConfigError):
        validate(SamplewiseLinearConfig, data)
