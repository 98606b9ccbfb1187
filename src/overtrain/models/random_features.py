"""Random-feature regression: feature maps, and every width, ridge value and training length of a
model-wise sweep from one spectral decomposition per width.

**Features** (`FeatureConfig`), drawn once per (data, seed) at the largest width ``P_max``; the model of
width ``P`` uses the first ``P`` columns, so the models of a sweep are nested (Belkin et al. 2019):

- ``relu``:    φ_j(x) = max(0, v_jᵀx),        v_j ~ N(0, I/d)                 (science.md §5)
- ``tanh``:    φ_j(x) = tanh(v_jᵀx),          v_j ~ N(0, I/d)
- ``fourier``: φ_j(x) = √2·cos(v_jᵀx + b_j),  v_j ~ N(0, σ⁻² I), b_j ~ U[0, 2π)  (random Fourier features;
  σ = the median pairwise distance of the training inputs unless given, science.md §8)

Features are not divided by √P: a constant scale does not change min-norm or GD predictions, and it
keeps the features of a prefix identical to those of the full draw.

**Fits.** With the thin SVD ``F_P = U S Vᵀ`` of the n x P training features (rank r, s_1 ≥ … ≥ s_r > 0),
every fit is a spectral filter ``a = V diag(g(s)) Uᵀ Y``:

- min-norm least squares (``pinv(F) Y``, what GD from zero converges to):  g(s) = 1/s
- ridge, ``min_a (1/n)·||F a − Y||² + λ·||a||²``:                          g(s) = s / (s² + nλ)
- T full-batch GD steps on ``½||F a − Y||²`` from a = 0, step η = 1/s_1²:   g(s) = (1 − (1 − η s²)^T) / s
  (science.md §0; exact, so training length is an axis for free)

so one decomposition per width serves every ridge value and every T. It comes from the smaller Gram
matrix: ``FᵀF = V S² Vᵀ`` (P x P) below the interpolation threshold, ``F Fᵀ = U S² Uᵀ`` (n x n) above it,
the latter accumulated across widths (``F_P F_Pᵀ = F_{P'} F_{P'}ᵀ + Σ_{P'<j≤P} f_j f_jᵀ``), so the whole
sweep touches every feature column once. The Gram squares the condition number; where s_r/s_1 < 1e-6
(near P = n) the width falls back to a direct SVD of ``F_P`` so min-norm stays exact.

**Metrics** per (width, fit), for targets Y (n x k): ``loss`` = mean over examples of ``||ŷ − y||²``
(summed over the k outputs: the squared loss of one-hot targets), ``error`` = fraction with
``argmax ŷ ≠ label`` (classification data), ``norm`` = ||a||_F, ``kappa`` = s_1/s_r of F_P.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from overtrain.config import BaseConfig
from overtrain.data.regression import RegressionData
from overtrain.errors import ConfigError
from overtrain.seed import numpy_rng

GRAM_RTOL = 1e-6
"""s_r/s_1 below which a width's spectrum comes from a direct SVD instead of the Gram matrix (the Gram's
eigenvalues s² lose relative precision below ~1e-16/κ²)."""

RANK_RTOL = 1e-10
"""Singular values below ``RANK_RTOL·s_1`` (direct SVD) count as zero, as in ``lstsq``'s rcond."""


class FeatureConfig(BaseConfig):
    """A random feature map (drawn once at the largest width of a sweep)."""

    kind: Literal["relu", "tanh", "fourier"] = "relu"
    """``relu`` / ``tanh``: φ(x) = act(vᵀx), v ~ N(0, I/d); ``fourier``: √2·cos(vᵀx + b), v ~ N(0, σ⁻² I)."""

    bandwidth: float | None = Field(None, gt=0)
    """σ of Fourier features; None: the median pairwise distance of the training inputs."""

    seed: int = 0
    """Seed of the draw."""


def median_distance(X: np.ndarray, max_points: int = 1000) -> float:
    """Median pairwise Euclidean distance between rows of `X` (the first `max_points` rows)."""
    Z = X[:max_points]
    sq = (Z * Z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0)
    return float(np.sqrt(np.median(d2[np.triu_indices(len(Z), 1)])))


def random_features(cfg: FeatureConfig, X: np.ndarray, X_test: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and test features (n x width, n_test x width) of one draw."""
    d = X.shape[1]
    # one feature's weights per row of the draw, and b from its own stream: the first P features are the
    # same whatever the width drawn
    rng = numpy_rng("random-features", cfg.kind, cfg.seed)
    if cfg.kind == "fourier":
        sigma = cfg.bandwidth or median_distance(X)
        V = rng.normal(0, 1 / sigma, (width, d)).T
        b = numpy_rng("random-features-phase", cfg.seed).uniform(0, 2 * math.pi, width)
        act = lambda Z: math.sqrt(2) * np.cos(Z + b)  # noqa: E731
    else:
        V = rng.normal(0, 1 / math.sqrt(d), (width, d)).T
        act = (lambda Z: np.maximum(Z, 0)) if cfg.kind == "relu" else np.tanh
    return act(X @ V), act(X_test @ V)


@dataclass(frozen=True)
class Fit:
    """One spectral filter: a name for the records and ``g(s, s_max)``."""

    solver: str
    """``min_norm``, ``ridge`` or ``gd``."""
    value: float | None
    """λ of ridge, T of gd, None for min-norm."""
    g: Callable[[np.ndarray, float], np.ndarray] = field(compare=False, repr=False)


def fits(ridges: Sequence[float] = (), steps: Sequence[float] = (), n: int = 1) -> list[Fit]:
    """Min-norm, then ridge at each λ (per example: ``nλ`` in the normal equations), then GD at each T."""
    out = [Fit("min_norm", None, lambda s, s1: 1 / s)]
    out += [Fit("ridge", lam, lambda s, s1, lam=lam: s / (s * s + n * lam)) for lam in ridges]
    # -expm1(T·log1p(-x)) = 1 − (1 − x)^T without cancellation when ηs² is tiny
    out += [Fit("gd", T, lambda s, s1, T=T: -np.expm1(T * np.log1p(-(s / s1) ** 2 * (1 - 1e-15))) / s)
            for T in steps]
    return out


@dataclass
class Spectrum:
    """Thin SVD pieces of one width: s (r,), UᵀY (r x k), and test features projected on V (m x r)."""

    s: np.ndarray
    uty: np.ndarray
    test_v: np.ndarray
    train_u: np.ndarray


def _from_svd(F: np.ndarray, Y: np.ndarray, F_test: np.ndarray) -> Spectrum:
    U, s, Vt = np.linalg.svd(F, full_matrices=False)
    keep = s > s[0] * RANK_RTOL
    U, s, Vt = U[:, keep], s[keep], Vt[keep]
    return Spectrum(s, U.T @ Y, F_test @ Vt.T, U)


def _from_eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Eigenpairs of a Gram matrix, descending, as (s, vectors, well_conditioned)."""
    from scipy.linalg import eigh

    # divide-and-conquer (LAPACK syevd): ~1.6x faster than numpy's syevr-based eigh at n = 500
    w, Q = eigh(gram, driver="evd", check_finite=False)
    w, Q = w[::-1], Q[:, ::-1]
    top = max(w[0], 0.0)
    keep = w > top * GRAM_RTOL**2
    ok = bool(keep.all()) and top > 0
    return np.sqrt(w[keep]), Q[:, keep], ok


def sweep_widths(F: np.ndarray, Y: np.ndarray, F_test: np.ndarray, widths: Sequence[int],
                 fit_list: Sequence[Fit], *, labels: np.ndarray | None = None,
                 labels_test: np.ndarray | None = None, Y_test: np.ndarray | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Every (width, fit) of a model-wise sweep over column prefixes of `F` (see the module docstring).

    Args:
        F, F_test: training (n x P_max) and test features; Y, Y_test: targets (n x k, m x k).
        widths: increasing widths P ≤ P_max.
        labels, labels_test: integer classes for 0-1 errors (train labels as fitted, i.e. noisy).

    Returns:
        One dict per (width, fit): width, solver, value, train_loss, test_loss, train_error,
        test_error, norm, kappa, rank.
    """
    n = F.shape[0]
    widths = [int(p) for p in widths]
    if any(b <= a for a, b in zip(widths, widths[1:])) or widths[0] < 1 or widths[-1] > F.shape[1]:
        raise ConfigError(f"widths must increase within 1..{F.shape[1]}, got {widths[:3]}...{widths[-1:]}")
    rows: list[dict] = []
    small = [p for p in widths if p < n]
    G = F[:, : small[-1]].T @ F[:, : small[-1]] if small else None
    K = Kt = None
    done = 0
    for i, P in enumerate(widths):
        Fp = F[:, :P]
        if P < n:
            s, V, ok = _from_eigh(G[:P, :P])
            spec = Spectrum(s, (V.T @ (Fp.T @ Y)) / s[:, None], F_test[:, :P] @ V, (Fp @ V) / s) if ok else None
        else:
            if K is None:
                K, Kt = Fp @ Fp.T, F_test[:, :P] @ Fp.T
            else:
                block = F[:, done:P]
                K += block @ block.T
                Kt += F_test[:, done:P] @ block.T
            done = P
            s, U, ok = _from_eigh(K)
            # F_test V = F_test Fᵀ U S⁻¹
            spec = Spectrum(s, U.T @ Y, (Kt @ U) / s, U) if ok else None
        if spec is None:  # too ill-conditioned for the Gram route: exact SVD of this width
            spec = _from_svd(Fp, Y, F_test[:, :P])
        rows += _metrics(P, spec, fit_list, Y, Y_test, labels, labels_test)
        if progress:
            progress(i + 1, len(widths))
    return rows


def _metrics(P, spec: Spectrum, fit_list, Y, Y_test, labels, labels_test) -> list[dict]:
    s, s1 = spec.s, spec.s[0]
    out = []
    for fit in fit_list:
        g = fit.g(s, s1)
        coef = g[:, None] * spec.uty  # a = V coef
        train = spec.train_u @ (s[:, None] * coef)
        test = spec.test_v @ coef
        row = {"width": P, "solver": fit.solver, "value": fit.value,
               "train_loss": float(((train - Y) ** 2).sum(1).mean()), "norm": float(np.sqrt((coef**2).sum())),
               "kappa": float(s1 / s[-1]), "rank": int(len(s))}
        if Y_test is not None:
            row["test_loss"] = float(((test - Y_test) ** 2).sum(1).mean())
        if labels is not None and Y.shape[1] > 1:
            row["train_error"] = float((train.argmax(1) != labels).mean())
        if labels_test is not None and Y.shape[1] > 1:
            row["test_error"] = float((test.argmax(1) != labels_test).mean())
        out.append(row)
    return out


def sweep_data(data: RegressionData, features: FeatureConfig, widths: Sequence[int], fit_list: Sequence[Fit],
               progress=None) -> list[dict]:
    """`sweep_widths` on one dataset and one feature draw at the largest width."""
    F, F_test = random_features(features, data.X, data.X_test, max(widths))
    return sweep_widths(F, data.Y, F_test, widths, fit_list, labels=data.labels, labels_test=data.labels_test,
                        Y_test=data.Y_test, progress=progress)
