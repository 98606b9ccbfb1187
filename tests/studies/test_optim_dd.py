"""Optimisation and double descent: batched readout training against per-width training, torch.optim and
the closed forms; the peak statistic; the claims on a reduced run and their calibrated decision rules (each
passes a planted effect and fails a planted null); config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from overtrain.errors import ConfigError
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
from overtrain.studies.dd_optimization.analysis import claims as optim_claims
from overtrain.studies.dd_optimization.calibrate import (
    no_peak_calibration,
    no_peak_rule,
    spearman_calibration,
    spearman_rule,
    trend_calibration,
    trend_rule,
)
from overtrain.studies.dd_optimization.config import OptimizationDDConfig, OptimizerSetting
from overtrain.studies.dd_optimization.engine import peak_statistics, run_optimization_dd
from overtrain.studies.dd_optimization.training import (
    singular_range,
    standardize,
    train_readouts,
    width_scales,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N = 30
WIDTHS = [8, 29, 30, 31, 60]


def _problem(S=2, n=N, d=5, p_max=60, k=1, m=40):
    """S seeds of features [S, n, p_max], targets [S, n, k], test data, and a standard-normal init draw."""
    Fs, Fts, Ys, Yts = [], [], [], []
    for s in range(S):
        rng = np.random.default_rng(s)
        X, Xt = rng.normal(size=(n, d)), rng.normal(size=(m, d))
        F, Ft = random_features(FeatureConfig(seed=s), X, Xt, p_max)
        Fs.append(F)
        Fts.append(Ft)
        Ys.append(np.tanh(X[:, :k]) + 0.3 * rng.normal(size=(n, k)))
        Yts.append(np.tanh(Xt[:, :k]))
    init = np.random.default_rng(99).standard_normal((S, p_max, k))
    return np.stack(Fs), np.stack(Ys), np.stack(Fts), np.stack(Yts), init


@pytest.mark.parametrize(
    "setting",
    [
        OptimizerSetting(batch_size=4, lr=0.3, epochs=6, init_scale=0.5),
        # 7 does not divide n = 30: the last batch of an epoch is smaller
        OptimizerSetting(batch_size=7, lr=0.2, epochs=5, momentum=0.9, normalization="sqrt_p"),
        OptimizerSetting(
            optimizer="adam", lr_units="absolute", lr=1e-2, batch_size=8, epochs=4, init_scale=0.1
        ),
        OptimizerSetting(optimizer="adam", lr_units="absolute", lr=3e-2, epochs=20, normalization="sqrt_p"),
    ],
)
def test_batched_widths_equal_training_each_width_alone(setting):
    F, Y, Ft, Yt, init = _problem(k=2)
    batched = train_readouts(F, Y, WIDTHS, setting, F_test=Ft, Y_test=Yt, init=init, order_seed=3)
    for w, P in enumerate(WIDTHS):
        alone = train_readouts(
            F[:, :, :P], Y, [P], setting, F_test=Ft[:, :, :P], Y_test=Yt, init=init[:, :P], order_seed=3
        )
        # the padded rows never move, and the width's rows are its own training run up to summation order
        assert np.all(batched.readouts[:, P:, w] == 0)
        np.testing.assert_allclose(batched.readouts[:, :P, w], alone.readouts[:, :, 0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batched.train_loss[:, w], alone.train_loss[:, 0], rtol=1e-9)
        np.testing.assert_allclose(batched.test_loss[:, w], alone.test_loss[:, 0], rtol=1e-9)


def test_full_batch_gd_at_the_edge_equals_the_closed_form():
    # lr = 1 in edge units is η = 1/s_max² on ½||Fa − y||², the closed form of sweep_widths
    F, Y, Ft, Yt, _ = _problem(S=1)
    T = 40
    fit = train_readouts(F, Y, WIDTHS, OptimizerSetting(lr=1.0, epochs=T), F_test=Ft, Y_test=Yt)
    rows = sweep_widths(F[0], Y[0], Ft[0], WIDTHS, fits(steps=[T]), Y_test=Yt[0])
    rows = [r for r in rows if r["solver"] == "gd"]
    for w, row in enumerate(rows):
        assert fit.train_loss[0, w] == pytest.approx(row["train_loss"], rel=1e-9)
        assert fit.test_loss[0, w] == pytest.approx(row["test_loss"], rel=1e-9)
        assert fit.norm[0, w] == pytest.approx(row["norm"], rel=1e-9)


def test_zero_init_gd_converges_to_the_min_norm_solution():
    F, Y, Ft, Yt, _ = _problem(S=1, d=20, p_max=90)
    widths = [90]  # P = 3n: κ ≈ 16, so the slowest direction's (1 − 0.5/κ²)^T is ~e^-40 after T = 80κ²
    smax, smin = singular_range(F, widths)
    steps = int(80 * (smax / smin).max() ** 2)
    fit = train_readouts(F, Y, widths, OptimizerSetting(lr=0.5, epochs=steps), F_test=Ft, Y_test=Yt)
    row = sweep_widths(F[0], Y[0], Ft[0], widths, fits(), Y_test=Yt[0])[0]
    assert fit.norm[0, 0] == pytest.approx(row["norm"], rel=1e-6)
    assert fit.test_loss[0, 0] == pytest.approx(row["test_loss"], rel=1e-6)
    assert fit.train_loss[0, 0] < 1e-12


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_update_rules_match_torch_optim(optimizer):
    F, Y, _, _, init = _problem(S=1, k=2)
    P, lr, B = 25, 1e-2, 6
    setting = OptimizerSetting(
        optimizer=optimizer, lr_units="absolute", lr=lr, batch_size=B, epochs=3, momentum=0.8, init_scale=0.2
    )
    ours = train_readouts(F[:, :, :P], Y, [P], setting, init=init[:, :P], order_seed=5).readouts[0, :, 0]
    a = torch.tensor(0.2 * init[0, :P], requires_grad=True)
    opt = torch.optim.Adam([a], lr=lr) if optimizer == "adam" else torch.optim.SGD([a], lr=lr, momentum=0.8)
    Ft, Yt = torch.tensor(F[0, :, :P]), torch.tensor(Y[0])
    from overtrain.seed import torch_generator

    gen = torch_generator("optim-dd-order", 5)
    for _ in range(3):
        order = torch.randperm(N, generator=gen)
        for start in range(0, N, B):
            idx = order[start : start + B]
            opt.zero_grad()
            loss = 0.5 * ((Ft[idx] @ a - Yt[idx]) ** 2).sum(1).mean()
            loss.backward()
            opt.step()
    np.testing.assert_allclose(ours, a.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_standardize_adds_an_intercept_and_keeps_the_threshold_at_n():
    F, _, Ft, _, _ = _problem(S=1)
    Z, Zt = standardize(F, Ft)
    assert Z.shape == F.shape and Zt.shape == Ft.shape
    assert np.all(Z[..., 0] == 1) and np.all(Zt[..., 0] == 1)
    np.testing.assert_allclose(Z[0, :, 1:].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[0, :, 1:].std(0), 1, rtol=1e-12)
    # centred columns alone would have rank n − 1 at P = n; with the intercept the n x n matrix is full rank
    assert np.linalg.matrix_rank(Z[0, :, :N]) == N
    assert np.linalg.matrix_rank(Z[0, :, 1 : N + 1]) == N - 1


def test_width_scales():
    np.testing.assert_allclose(width_scales([4, 100], "sqrt_p"), [0.5, 0.1])
    np.testing.assert_allclose(width_scales([4, 100], "standardize"), [1, 1])


def test_peak_statistics_on_handmade_curves():
    n = 100
    widths = [25, 50, 60, 70, 90, 100, 110, 150, 175, 200, 300]
    flat = [1.0] * len(widths)
    p = peak_statistics(widths, flat, n)
    assert p.height == pytest.approx(1.0) and p.local_ratio == pytest.approx(1.0)
    # windows [0.5, 0.7] ∪ [1.5, 2]: 50, 60, 70, 150, 175, 200 -> median of 2, 2, 3, 4, 5, 9 = 3.5
    curve = [7, 2, 2, 3, 6, 35, 10, 4, 5, 9, 1]
    p = peak_statistics(widths, curve, n)
    assert p.baseline == pytest.approx(3.5)
    assert p.test_at_n == 35
    assert p.height == pytest.approx(10.0)
    assert p.local_ratio == pytest.approx(35 / 8)
    assert peak_statistics(widths, curve, n, windows=[(0.2, 0.3)]).height == pytest.approx(5.0)
    with pytest.raises(ValueError, match="P = n"):
        peak_statistics([50, 90, 110], [1, 1, 1], n)
    with pytest.raises(ValueError, match="neighbour"):
        peak_statistics([50, 100], [1, 1], n)


def _small_config(**kw):
    base = dict(
        data={"name": "teacher", "n_train": 60, "n_test": 300},
        width_ratios=[0.25, 0.5, 0.7, 0.9, 1.0, 1.1, 1.5, 2.0],
        seeds=[0, 1, 2, 3],
        steps=[1e1, 1e3, 1e5],
        settings=[
            OptimizerSetting(name="GD short", lr=0.5, epochs=10),
            OptimizerSetting(name="SGD b=8", batch_size=8, lr=0.3, epochs=20),
            OptimizerSetting(name="Adam", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=300),
            OptimizerSetting(
                name="GD heavy ball std", momentum=0.99, epochs=600, normalization="standardize"
            ),
        ],
        spearman_boot=200,
    )
    return OptimizationDDConfig(**{**base, **kw})


def test_claims_on_a_reduced_run():
    cfg = _small_config()
    calls = []
    res = run_optimization_dd(cfg, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5)
    claims = optim_claims(cfg, res.rows())
    assert len(claims) == 6
    kappa, norm, rise, falls, no_peak, rank = claims
    assert [c.type for c in claims] == ["check", "check", "finding", "check", "finding", "finding"]
    assert kappa.verdict == "PASS" and kappa.value == 1.0
    assert norm.verdict == "PASS" and falls.verdict == "PASS"
    assert rise.verdict == "PASS" and rise.value > 0
    assert no_peak.verdict == "PASS" and no_peak.value <= 1.1
    assert rank.value is not None and rank.ci_low <= rank.value <= rank.ci_high
    assert rank.verdict == "PASS"
    for finding in (rise, no_peak, rank):  # calibrated: a measured fpr within 5%, and a power
        assert (
            finding.fpr <= 0.05 and finding.power is not None and "simulations of 4 seeds" in finding.detail
        )
    # the same runs on two seeds: no finding can PASS or FAIL
    two = _small_config(seeds=[0, 1])
    fewer = optim_claims(two, [r for r in res.rows() if r.get("seed") in (None, 0, 1)])
    assert [c.verdict for c in fewer if c.type == "finding"] == ["UNDERPOWERED"] * 3

    summary = {r["setting"]: r for r in res.summary()}
    assert set(summary) == {
        "closed-form GD T=1e+01",
        "closed-form GD T=1e+03",
        "closed-form GD T=1e+05",
        "min-norm (T=∞)",
        "GD short",
        "SGD b=8",
        "Adam",
        "GD heavy ball std",
    }
    # the fastest optimiser reaches a lower loss at P = n than 10 plain GD steps, and a higher peak
    assert summary["GD heavy ball std"]["train_loss_at_n"] < summary["GD short"]["train_loss_at_n"]
    assert summary["GD heavy ball std"]["peak_height"] > summary["GD short"]["peak_height"]

    rows = res.rows()
    curves = [r for r in rows if r["record"] == "curve"]
    assert len(curves) == len(summary) * len(cfg.seeds) * len(cfg.widths())
    keys = {"setting", "family", "seed", "width", "ratio", "train_loss", "test_loss", "kappa"}
    assert keys <= set(curves[0])
    settings = [r for r in rows if r["record"] == "setting"]
    assert len(settings) == len(summary) and all(r["description"] for r in settings)


# --- the decision rules on planted nulls and effects -----------------------------------------------------


def test_trend_rule_passes_a_planted_rise_and_fails_a_flat_null():
    rng = np.random.default_rng(0)
    rise = np.log([0.2, 0.3, 0.6, 1.6, 5.7, 60.0])
    for _ in range(3):
        assert trend_rule(rise + rng.normal(0, 0.2, size=(4, 6)))
        assert not trend_rule(np.log(0.5) + rng.normal(0, 0.2, size=(4, 6)))
    assert not trend_rule(rise + np.zeros((3, 6)))  # three seeds: no bound
    cal = trend_calibration(rise + rng.normal(0, 0.02, size=(4, 6)), rise=0.5)
    assert cal.fpr <= 0.05 and cal.power >= 0.8


def test_no_peak_rule_passes_a_flat_curve_and_fails_a_planted_peak():
    """Local log ratios at P = n: none (≈ 0) passes; a 30% peak fails; the boundary null is calibrated."""
    rng = np.random.default_rng(0)
    rule = no_peak_rule(0.1)
    for _ in range(3):
        assert rule(rng.normal(0.0, 0.02, size=(4, 1)))
        assert not rule(rng.normal(np.log(1.3), 0.02, size=(4, 1)))
    cal = no_peak_calibration(rng.normal(0, 0.02, size=4), 0.1)
    assert cal.fpr <= 0.05 and cal.power >= 0.8


def test_spearman_rule_passes_a_planted_tracking_and_fails_a_constant_height():
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 6.0, 12)
    rule = spearman_rule(x, 0.8)
    tracking = np.log(1 + x)
    for _ in range(3):
        assert rule(tracking + rng.normal(0, 0.05, size=(4, 12)))
        assert not rule(rng.normal(0, 0.05, size=(4, 12)))
    cal = spearman_calibration(x, tracking + rng.normal(0, 0.01, size=(4, 12)), 0.8, peak=1.0)
    assert cal.fpr <= 0.05 and cal.power >= 0.8


def test_config_defaults_and_validation():
    cfg = OptimizationDDConfig()
    assert 200 in cfg.widths() and cfg.data.n_train == 200
    assert len(cfg.settings) >= 8
    assert len({s.label() for s in cfg.settings}) == len(cfg.settings)
    assert OptimizationDDConfig(width_ratios=[0.5, 0.6, 2.0, 1.5, 0.3]).width_ratios[3] == 1.0  # 1.0 added
    bad = [
        dict(peak_windows=[(0.8, 1.2)]),  # holds the peak itself
        dict(peak_windows=[(5.0, 6.0)]),  # no width inside
        dict(width_ratios=[0.5, 0.501, 2.0]),  # collide after rounding at n = 200
        dict(width_ratios=[0.5, 0.6, 0.7]),  # nothing above n
        dict(seeds=[]),
        dict(steps=[0.5]),
        dict(settings=[OptimizerSetting(batch_size=500)]),  # larger than n
        dict(settings=[OptimizerSetting(), OptimizerSetting()]),  # duplicate labels
        dict(unknown=1),
    ]
    for kw in bad:
        with pytest.raises(ValidationError):
            OptimizationDDConfig(**kw)
    with pytest.raises(ValidationError, match="absolute"):
        OptimizerSetting(optimizer="adam", lr=1e-3)
    with pytest.raises(ValidationError):
        OptimizerSetting(batch_size=0)
    s = OptimizerSetting(batch_size=32, epochs=3)
    assert s.batch(200) == 32 and s.steps(200) == 3 * 7
    assert OptimizerSetting(epochs=5).steps(200) == 5
    with pytest.raises(ConfigError):
        train_readouts(np.zeros((1, 5, 4)), np.zeros((1, 5, 1)), [3, 2], OptimizerSetting())
