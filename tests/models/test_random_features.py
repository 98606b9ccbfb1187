"""Random-feature sweeps from shared factorisations, against direct fits."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.data.regression import TeacherConfig
from overtrain.errors import ConfigError
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths


def _problem(n=40, d=5, P_max=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X, X_test = rng.normal(size=(n, d)), rng.normal(size=(30, d))
    F, F_test = random_features(FeatureConfig(kind="relu", seed=seed), X, X_test, P_max)
    return F, rng.normal(size=(n, k)), F_test, rng.normal(size=(30, k))


WIDTHS = [3, 10, 25, 39, 40, 41, 60, 120]


def test_min_norm_matches_lstsq_at_every_width():
    F, Y, F_test, Y_test = _problem()
    rows = sweep_widths(F, Y, F_test, WIDTHS, fits(), Y_test=Y_test)
    for row in rows:
        P = row["width"]
        a = np.linalg.lstsq(F[:, :P], Y, rcond=None)[0]
        # at P = n the interpolant is the most ill-conditioned fit of the sweep
        assert row["test_loss"] == pytest.approx(((F_test[:, :P] @ a - Y_test) ** 2).sum(1).mean(), rel=1e-7)
        # above n the residual of the dual solve is ~eps·κ²·||Y|| (κ ~ 1e4 at P = n): zero at this precision
        assert row["train_loss"] == pytest.approx(
            ((F[:, :P] @ a - Y) ** 2).sum(1).mean(), rel=1e-7, abs=1e-15
        )
        assert row["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-7)
        assert row["kappa"] == pytest.approx(np.linalg.cond(F[:, :P]), rel=1e-6)
    interp = [r for r in rows if r["width"] >= 40]
    assert all(r["train_loss"] < 1e-15 for r in interp)  # P ≥ n interpolates


def test_ridge_matches_the_normal_equations():
    F, Y, F_test, Y_test = _problem()
    lam = 0.05
    n = F.shape[0]
    rows = [
        r
        for r in sweep_widths(F, Y, F_test, WIDTHS, fits(ridges=[lam], n=n), Y_test=Y_test)
        if r["solver"] == "ridge"
    ]
    for row in rows:
        P = row["width"]
        a = np.linalg.solve(F[:, :P].T @ F[:, :P] + n * lam * np.eye(P), F[:, :P].T @ Y)
        assert row["test_loss"] == pytest.approx(((F_test[:, :P] @ a - Y_test) ** 2).sum(1).mean(), rel=1e-8)
        assert row["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-8)


def test_gd_closed_form_matches_explicit_gradient_descent():
    F, Y, F_test, Y_test = _problem()
    T = 50
    rows = [
        r for r in sweep_widths(F, Y, F_test, WIDTHS, fits(steps=[T]), Y_test=Y_test) if r["solver"] == "gd"
    ]
    for row in rows:
        P = row["width"]
        Fp = F[:, :P]
        eta = 1 / np.linalg.norm(Fp, 2) ** 2
        a = np.zeros((P, Y.shape[1]))
        for _ in range(T):
            a -= eta * Fp.T @ (Fp @ a - Y)
        assert row["train_loss"] == pytest.approx(((Fp @ a - Y) ** 2).sum(1).mean(), rel=1e-8)
        assert row["test_loss"] == pytest.approx(((F_test[:, :P] @ a - Y_test) ** 2).sum(1).mean(), rel=1e-8)


def test_gd_approaches_min_norm_and_ill_conditioned_widths_fall_back_to_svd():
    F, Y, F_test, Y_test = _problem()
    rows = sweep_widths(F, Y, F_test, [20, 80], fits(steps=[1e12]), Y_test=Y_test)
    by = {(r["width"], r["solver"]): r for r in rows}
    for P in (20, 80):
        assert by[P, "gd"]["test_loss"] == pytest.approx(by[P, "min_norm"]["test_loss"], rel=1e-6)
    # duplicate columns make F_P rank deficient: the Gram route refuses, the SVD route gives lstsq's answer
    Fd = np.concatenate([F[:, :10], F[:, :10], F[:, 10:]], axis=1)
    Fd_test = np.concatenate([F_test[:, :10], F_test[:, :10], F_test[:, 10:]], axis=1)
    (row,) = sweep_widths(Fd, Y, Fd_test, [30], fits(), Y_test=Y_test)
    a = np.linalg.lstsq(Fd[:, :30], Y, rcond=None)[0]
    assert row["rank"] == 20 and row["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-7)


def test_features_are_nested_across_widths_and_fourier_uses_the_median_distance():
    data = TeacherConfig(n_train=50, n_test=20).build()
    for kind in ("relu", "tanh", "fourier"):
        small, _ = random_features(FeatureConfig(kind=kind), data.X, data.X_test, 10)
        big, _ = random_features(FeatureConfig(kind=kind), data.X, data.X_test, 30)
        np.testing.assert_array_equal(small, big[:, :10])
    F, _ = random_features(FeatureConfig(kind="fourier"), data.X, data.X_test, 20000)
    assert np.abs(F).max() <= np.sqrt(2) + 1e-12 and (F**2).mean() == pytest.approx(1.0, abs=0.03)


def test_bad_widths_are_config_errors():
    F, Y, F_test, Y_test = _problem()
    with pytest.raises(ConfigError):
        sweep_widths(F, Y, F_test, [10, 5], fits())
    with pytest.raises(ConfigError):
        sweep_widths(F, Y, F_test, [10, 500], fits())


def test_factorisation_route_equals_the_spectral_route_and_falls_back_when_rank_deficient():
    """Min-norm and ridge alone take the QR/Cholesky route; adding a GD length forces the eigh route."""
    F, Y, F_test, Y_test = _problem()
    n = F.shape[0]
    fast = sweep_widths(F, Y, F_test, WIDTHS, fits(ridges=[1e-3, 0.1], n=n), Y_test=Y_test)
    spectral = [
        r
        for r in sweep_widths(F, Y, F_test, WIDTHS, fits(ridges=[1e-3, 0.1], steps=[10], n=n), Y_test=Y_test)
        if r["solver"] != "gd"
    ]
    assert [(r["width"], r["solver"], r["value"]) for r in fast] == [
        (r["width"], r["solver"], r["value"]) for r in spectral
    ]
    for a, b in zip(fast, spectral):
        for key in ("test_loss", "norm", "kappa"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["width"], a["solver"], key)
    # 30 distinct columns repeated: rank 30 < n = 40 at P = 45, the dual Gram is singular -> exact SVD
    Fd = np.concatenate([F[:, :30], F[:, :15]], axis=1)
    Fd_test = np.concatenate([F_test[:, :30], F_test[:, :15]], axis=1)
    rows = sweep_widths(Fd, Y, Fd_test, [20, 45], fits(ridges=[0.1], n=n), Y_test=Y_test)
    mn = {r["width"]: r for r in rows if r["solver"] == "min_norm"}
    a = np.linalg.lstsq(Fd, Y, rcond=None)[0]
    assert mn[45]["rank"] == 30 and mn[45]["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-7)
    ridge = [r for r in rows if r["solver"] == "ridge" and r["width"] == 45][0]
    a = np.linalg.solve(Fd.T @ Fd + n * 0.1 * np.eye(45), Fd.T @ Y)
    assert ridge["test_loss"] == pytest.approx(((Fd_test @ a - Y_test) ** 2).sum(1).mean(), rel=1e-8)


def test_lanczos_extreme_eigenvalue_meets_its_residual_bound():
    from overtrain.models.random_features import _extreme_eig

    rng = np.random.default_rng(3)
    A = rng.normal(size=(200, 300))
    K = A @ A.T
    top = np.linalg.eigvalsh(K)[-1]
    theta, v = _extreme_eig(lambda x: K @ x, rng.normal(size=200), tol=1e-7)
    assert abs(theta - top) <= 1e-7 * top
    assert np.linalg.norm(K @ v - theta * v) <= 1e-7 * theta * np.linalg.norm(v)
    inv, _ = _extreme_eig(lambda x: np.linalg.solve(K, x), rng.normal(size=200), tol=1e-7)
    assert 1 / inv == pytest.approx(np.linalg.eigvalsh(K)[0], rel=1e-7)
