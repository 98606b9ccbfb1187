"""Random-feature regression: feature maps, and every width, ridge value and training length of a
model-wise sweep from factorisations shared across widths.

**Features** (`FeatureConfig`), drawn once per (data, seed) at the largest width ``P_max``; the model of
width ``P`` uses the first ``P`` columns, so the models of a sweep are nested (Belkin et al. 2019):

- ``relu``:    φ_j(x) = max(0, v_jᵀx),        v_j ~ N(0, I/d)            (docs/double_descent.md)
- ``tanh``:    φ_j(x) = tanh(v_jᵀx),          v_j ~ N(0, I/d)
- ``fourier``: φ_j(x) = √2·cos(v_jᵀx + b_j),  v_j ~ N(0, σ⁻² I), b_j ~ U[0, 2π)  (random Fourier features;
  σ = the median pairwise distance of the training inputs unless given: the median heuristic)

Features are not divided by √P: a constant scale does not change min-norm or GD predictions, and it
keeps the features of a prefix identical to those of the full draw.

**Fits.** With the thin SVD ``F_P = U S Vᵀ`` of the n x P training features (rank r, s_1 ≥ … ≥ s_r > 0),
every fit is a spectral filter ``a = V diag(g(s)) Uᵀ Y``:

- min-norm least squares (``pinv(F) Y``, what GD from zero converges to):  g(s) = 1/s
- ridge, ``min_a (1/n)·||F a − Y||² + λ·||a||²``:                          g(s) = s / (s² + nλ)
- T full-batch GD steps on ``½||F a − Y||²`` from a = 0, step η = 1/s_1²:   g(s) = (1 − (1 − η s²)^T) / s
  (exact, so training length is an axis for free; docs/double_descent.md)

so one decomposition per width serves every ridge value and every T (`_spectral_sweep`). It comes from
the smaller Gram matrix: ``FᵀF = V S² Vᵀ`` (P x P) below the interpolation threshold, ``F Fᵀ = U S² Uᵀ``
(n x n) above it, the latter accumulated across widths (``F_P F_Pᵀ = F_{P'} F_{P'}ᵀ + Σ_{P'<j≤P} f_j f_jᵀ``),
so the whole sweep touches every feature column once. Min-norm and ridge alone need no spectrum: one QR
or Cholesky below the threshold serves every prefix and one Cholesky per width above it, ~5x cheaper than
an eigendecomposition per width (`_factor_sweep`). The Gram squares the condition number; where
s_r/s_1 < 1e-6 (near P = n) the width falls back to a direct SVD of ``F_P`` so min-norm stays exact.

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


def random_features(
    cfg: FeatureConfig, X: np.ndarray, X_test: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
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
    out += [
        Fit("gd", T, lambda s, s1, T=T: -np.expm1(T * np.log1p(-((s / s1) ** 2) * (1 - 1e-15))) / s)
        for T in steps
    ]
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


def sweep_widths(
    F: np.ndarray,
    Y: np.ndarray,
    F_test: np.ndarray,
    widths: Sequence[int],
    fit_list: Sequence[Fit],
    *,
    labels: np.ndarray | None = None,
    labels_test: np.ndarray | None = None,
    Y_test: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Every (width, fit) of a model-wise sweep over column prefixes of `F` (see the module docstring).

    Min-norm and ridge fits alone take the factorisation route (`_factor_sweep`); any GD length needs
    each width's spectrum (`_spectral_sweep`). Both give the same numbers to ~1e-8 (tests).

    Args:
        F, F_test: training (n x P_max) and test features; Y, Y_test: targets (n x k, m x k).
        widths: increasing widths P ≤ P_max.
        labels, labels_test: integer classes for 0-1 errors (train labels as fitted, i.e. noisy).

    Returns:
        One dict per (width, fit): width, solver, value, train_loss, test_loss, train_error,
        test_error, norm, kappa, rank.
    """
    widths = [int(p) for p in widths]
    if any(b <= a for a, b in zip(widths, widths[1:])) or widths[0] < 1 or widths[-1] > F.shape[1]:
        raise ConfigError(f"widths must increase within 1..{F.shape[1]}, got {widths[:3]}...{widths[-1:]}")
    targets = _Targets(Y, Y_test, labels, labels_test)
    sweep = _spectral_sweep if any(f.solver == "gd" for f in fit_list) else _factor_sweep
    return sweep(F, F_test, widths, list(fit_list), targets, progress)


@dataclass
class _Targets:
    Y: np.ndarray
    Y_test: np.ndarray | None
    labels: np.ndarray | None
    labels_test: np.ndarray | None


def _spectral_sweep(F, F_test, widths, fit_list, tg: _Targets, progress) -> list[dict]:
    """One Gram eigendecomposition per width (accumulated above n); serves every filter g(s)."""
    n, Y = F.shape[0], tg.Y
    rows: list[dict] = []
    small = [p for p in widths if p < n]
    G = F[:, : small[-1]].T @ F[:, : small[-1]] if small else None
    K = Kt = None
    done = 0
    for i, P in enumerate(widths):
        Fp = F[:, :P]
        if P < n:
            s, V, ok = _from_eigh(G[:P, :P])
            spec = (
                Spectrum(s, (V.T @ (Fp.T @ Y)) / s[:, None], F_test[:, :P] @ V, (Fp @ V) / s) if ok else None
            )
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
        rows += _metrics(P, spec, fit_list, tg)
        if progress:
            progress(i + 1, len(widths))
    return rows


def _metrics(P, spec: Spectrum, fit_list, tg: _Targets) -> list[dict]:
    s, s1 = spec.s, spec.s[0]
    out = []
    for fit in fit_list:
        coef = fit.g(s, s1)[:, None] * spec.uty  # a = V coef
        out.append(
            _row(
                P,
                fit,
                spec.train_u @ (s[:, None] * coef),
                spec.test_v @ coef,
                float(np.sqrt((coef**2).sum())),
                float(s1 / s[-1]),
                len(s),
                tg,
            )
        )
    return out


def _row(
    P: int, fit: Fit, train: np.ndarray, test: np.ndarray, norm: float, kappa: float, rank: int, tg: _Targets
) -> dict:
    row = {
        "width": P,
        "solver": fit.solver,
        "value": fit.value,
        "train_loss": float(((train - tg.Y) ** 2).sum(1).mean()),
        "norm": norm,
        "kappa": kappa,
        "rank": int(rank),
    }
    if tg.Y_test is not None:
        row["test_loss"] = float(((test - tg.Y_test) ** 2).sum(1).mean())
    if tg.labels is not None and tg.Y.shape[1] > 1:
        row["train_error"] = float((train.argmax(1) != tg.labels).mean())
    if tg.labels_test is not None and tg.Y.shape[1] > 1:
        row["test_error"] = float((test.argmax(1) != tg.labels_test).mean())
    return row


# --- the factorisation route: min-norm and ridge without a spectrum ----------------------------------


def _factor_sweep(F, F_test, widths, fit_list, tg: _Targets, progress) -> list[dict]:
    """Min-norm and ridge fits at every width from factorisations shared across widths.

    Below the threshold (P < n) one factorisation of the widest under-parameterised prefix serves every
    smaller prefix, because the leading P x P block of a triangular factor is the factor of the leading
    block: min-norm ``a_P = R_P⁻¹ (QᵀY)_P`` from one QR of ``F_{P<n}`` (error ∝ κ, not κ²), ridge
    ``a_P = L_P⁻ᵀ (L⁻¹ FᵀY)_P`` from one Cholesky ``L Lᵀ = FᵀF + nλI`` per λ. Above it, the dual
    ``a = F_Pᵀ c`` with ``(K_P + nλI) c = Y``, ``K_P = F_P F_Pᵀ`` accumulated across widths: one n x n
    Cholesky per (width, λ); train predictions ``K_P c``, ``||a||² = cᵀ K_P c``, and the test predictions
    ``F_test,P F_Pᵀ c`` of all widths in one final pass over the feature columns (`_dual_predictions`).
    κ comes from Lanczos on the same factors (`_WarmLanczos`). A width whose κ exceeds ``1/GRAM_RTOL`` or
    whose factorisation fails is redone by a direct SVD, as in the spectral route.

    Cost: O(n² P_max) for the Gram, O(n³/3) per (width above n, λ), O((n + m)·k·#fits·Σ_{P≥n} P) for the
    test predictions; a per-width SVD costs O(n² P) each.
    """
    n = F.shape[0]
    shifts = [0.0] + sorted({n * f.value for f in fit_list if f.solver == "ridge"} - {0.0})
    column = {sh: slice(j * tg.Y.shape[1], (j + 1) * tg.Y.shape[1]) for j, sh in enumerate(shifts)}

    def rows_of(P, train, test, sq, kappa, rank):
        return [
            _row(P, fit, train[:, c], test[:, c], float(np.sqrt(sq[c].sum())), kappa, rank, tg)
            for fit in fit_list
            for c in [column[n * fit.value if fit.solver == "ridge" else 0.0]]
        ]

    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, len(widths))

    lanczos = _WarmLanczos()
    below = [p for p in widths if p < n]
    above = [p for p in widths if p >= n]
    out = _below_threshold(F, F_test, below, shifts, tg, lanczos, rows_of, tick) if below else {}
    if above:
        out |= _above_threshold(F, F_test, above, shifts, tg, lanczos, rows_of, tick)
    for P in widths:
        if out[P] is None:  # too ill-conditioned for the factorisations: exact SVD of this width
            out[P] = _metrics(P, _from_svd(F[:, :P], tg.Y, F_test[:, :P]), fit_list, tg)
    return [row for P in widths for row in out[P]]


def _below_threshold(F, F_test, widths, shifts, tg: _Targets, lanczos, rows_of, tick) -> dict:
    from scipy.linalg import lapack, qr

    Fs = F[:, : widths[-1]]
    Q, R = qr(Fs, mode="economic", check_finite=False)
    qty = Q.T @ tg.Y
    G, fty = Fs.T @ Fs, Fs.T @ tg.Y
    chol = {}  # nλ -> (L, L⁻¹FᵀY, size of the valid leading block: dpotrf's info marks a failed pivot)
    for sh in shifts[1:]:
        L, info = lapack.dpotrf(G + sh * np.eye(len(G)), lower=1, clean=1)
        chol[sh] = (L, lapack.dtrtrs(L, fty, lower=1)[0], info - 1 if info > 0 else len(G))
    out = {}
    for P in widths:
        Rp = np.asfortranarray(R[:P, :P])
        kappa = lanczos.kappa_triangular(Rp)
        out[P] = None
        if kappa <= 1 / GRAM_RTOL and all(chol[sh][2] >= P for sh in shifts[1:]):
            coefs = [lapack.dtrtrs(Rp, qty[:P])[0]]
            coefs += [
                lapack.dtrtrs(np.asfortranarray(chol[sh][0][:P, :P]), chol[sh][1][:P], lower=1, trans=1)[0]
                for sh in shifts[1:]
            ]
            A = np.concatenate(coefs, axis=1)
            out[P] = rows_of(P, F[:, :P] @ A, F_test[:, :P] @ A, (A**2).sum(0), kappa, P)
        tick()
    return out


def _above_threshold(F, F_test, widths, shifts, tg: _Targets, lanczos, rows_of, tick) -> dict:
    from scipy.linalg import lapack

    n = F.shape[0]
    K = np.zeros((n, n))
    duals, out, prev = {}, {}, 0
    for P in widths:
        block = F[:, prev:P]
        K += block @ block.T
        prev = P
        L0, info = lapack.dpotrf(K, lower=1, clean=1)
        kappa = lanczos.kappa_cholesky(K, L0) if info == 0 else math.inf
        sols = [lapack.dpotrs(L0, tg.Y, lower=1)[0]] if kappa <= 1 / GRAM_RTOL else None
        for sh in shifts[1:]:
            L, info = lapack.dpotrf(K + sh * np.eye(n), lower=1, clean=1) if sols else (None, 1)
            sols = sols + [lapack.dpotrs(L, tg.Y, lower=1)[0]] if info == 0 else None
        out[P] = None
        if sols:
            C = np.concatenate(sols, axis=1)
            KC = K @ C
            duals[P] = (C, KC, kappa)
        tick()
    tests = _dual_predictions(F, F_test, {P: C for P, (C, _, _) in duals.items()}) if duals else {}
    for P, (C, KC, kappa) in duals.items():
        # a = F_Pᵀc: train F_P a = K c, ||a||² = cᵀKc
        out[P] = rows_of(P, KC, tests[P], (C * KC).sum(0), kappa, n)
    return out


def _dual_predictions(
    F: np.ndarray, F_test: np.ndarray, duals: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """``F_test[:, :P] F[:, :P]ᵀ C_P`` for every width P, reading each feature column once: the block of
    columns between consecutive widths contributes ``F_test,b (F_bᵀ [C_P ...])`` to every width that
    contains it, as one wide product."""
    widths = sorted(duals)
    W = np.concatenate([duals[P] for P in widths], axis=1)
    offsets = np.cumsum([0] + [duals[P].shape[1] for P in widths])
    T = np.zeros((F_test.shape[0], W.shape[1]))
    start = 0
    for j, P in enumerate(widths):
        T[:, offsets[j] :] += F_test[:, start:P] @ (F[:, start:P].T @ W[:, offsets[j] :])
        start = P
    return {P: T[:, offsets[j] : offsets[j + 1]] for j, P in enumerate(widths)}


class _WarmLanczos:
    """κ(F_P) = √(λ_max/λ_min) of the Gram matrix by Lanczos, warm-started from the previous width's
    extreme eigenvectors (they change little from one width to the next, so a few iterations suffice;
    a block of 4 vectors per step was slower at n = 500)."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.top: np.ndarray | None = None
        self.bottom: np.ndarray | None = None

    def _start(self, prev: np.ndarray | None, dim: int) -> np.ndarray:
        v = self.rng.standard_normal(dim)
        if prev is not None:
            v *= 1e-6
            v[: min(dim, len(prev))] += prev[:dim]
        return v

    def _kappa(self, dim, apply, apply_inv) -> float:
        hi, self.top = _extreme_eig(apply, self._start(self.top, dim))
        inv, self.bottom = _extreme_eig(apply_inv, self._start(self.bottom, dim))
        return math.sqrt(hi * inv) if math.isfinite(inv) and inv > 0 and hi > 0 else math.inf

    def kappa_triangular(self, R: np.ndarray) -> float:
        """κ of R (upper triangular), i.e. of the F_P it factors: Lanczos on RᵀR and on (RᵀR)⁻¹."""
        from scipy.linalg import lapack

        if not np.all(np.abs(np.diag(R)) > 0):
            return math.inf
        return self._kappa(
            len(R), lambda v: R.T @ (R @ v), lambda v: lapack.dtrtrs(R, lapack.dtrtrs(R, v, trans=1)[0])[0]
        )

    def kappa_cholesky(self, K: np.ndarray, L: np.ndarray) -> float:
        """κ of F_P from its Gram K = F_P F_Pᵀ = L Lᵀ: Lanczos on K and on K⁻¹."""
        from scipy.linalg import lapack

        return self._kappa(len(K), lambda v: K @ v, lambda v: lapack.dpotrs(L, v, lower=1)[0])


def _extreme_eig(
    apply: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, tol: float = 1e-7, max_iter: int = 200
) -> tuple[float, np.ndarray]:
    """Largest eigenvalue (and its vector) of a symmetric positive operator, by Lanczos with full
    reorthogonalisation, stopped when the Ritz residual ``‖A y − θ y‖ ≤ tol·θ`` (so |θ − λ| ≤ tol·θ).
    Returns (inf, v0) if the operator produces non-finite values."""
    dim = len(v0)
    m = min(max_iter, dim)
    basis = np.empty((m, dim))
    basis[0] = v0 / np.linalg.norm(v0)
    T = np.zeros((m, m))  # the Lanczos tridiagonal
    for j in range(m):
        w = apply(basis[j])
        if not np.all(np.isfinite(w)):
            return math.inf, v0
        T[j, j] = w @ basis[j]
        Qj = basis[: j + 1]
        for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
            w -= Qj.T @ (Qj @ w)
        b = float(np.linalg.norm(w))
        theta, vecs = np.linalg.eigh(T[: j + 1, : j + 1])
        if b * abs(vecs[-1, -1]) <= tol * theta[-1] or j + 1 == m or b == 0:
            return float(theta[-1]), Qj.T @ vecs[:, -1]
        T[j, j + 1] = T[j + 1, j] = b
        basis[j + 1] = w / b
    raise AssertionError("unreachable")


def sweep_data(
    data: RegressionData,
    features: FeatureConfig,
    widths: Sequence[int],
    fit_list: Sequence[Fit],
    progress=None,
) -> list[dict]:
    """`sweep_widths` on one dataset and one feature draw at the largest width."""
    F, F_test = random_features(features, data.X, data.X_test, max(widths))
    return sweep_widths(
        F,
        data.Y,
        F_test,
        widths,
        fit_list,
        labels=data.labels,
        labels_test=data.labels_test,
        Y_test=data.Y_test,
        progress=progress,
    )
