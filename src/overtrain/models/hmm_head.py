"""Head tuning on the representations of a linear-Gaussian HMM (Luo, Wang, Huang 2024; science.md §4).

A frozen "language model" is stood in for by a linear-Gaussian hidden Markov model over latent tokens
z_t ∈ R^m, and its representation of a sequence by a noisy linear read-out of the last latent:

    z_1 ~ N(0, I_m),   z_{t+1} = A z_t + ℓ ε_t,   ε_t ~ N(0, I_m),      t = 1..T        (T = seq_len)
    x   = C z_T + r u,                             u ~ N(0, I_D)                          (D = repr_dim)
    y   = s θᵀ z_{T+1} + σ e,                      e ~ N(0, 1)

with A a Gaussian matrix rescaled to spectral radius ρ (``spectral_radius``), C ∈ R^{D x m} with entries
N(0, 1/m), θ ~ N(0, I_m / m), ℓ = ``latent_noise``, r = ``repr_noise``, σ = ``target_noise`` and s the
signal multiplier of the SNR study (``snrs``; s = 1 is the paper's setting). A, C, θ, the coordinate order
and both samples are redrawn for every trial.

**Head tuning** fits a linear head on the first p coordinates of x (the coordinates in a random order per
trial; "model complexity" is p) by minimum-norm least squares on n = ``n_train`` examples,

    β̂_p = pinv(X_p) y,      X_p ∈ R^{n x p},

and its **risk** is the test mean squared error ``mean_i (x_{i,≤p}ᵀ β̂_p − y_i)²`` on ``n_test`` fresh
examples (squared target units). The **null risk** is that of predicting 0, i.e. the test mean of y².

**SNR.** The multiplier s scales θ, so the population signal variance Var(s θᵀ z_{T+1}) = s² θᵀ Σ_{T+1} θ
grows as s², with Σ_1 = I and Σ_{t+1} = A Σ_t Aᵀ + ℓ² I the exact latent covariance. The *actual* SNR of
a setting is s² θᵀ Σ_{T+1} θ / σ², averaged over trials (`HeadTuningResult.snr_actual`). All settings share
every random draw (common random numbers): only s changes, and since β̂ is linear in y the fits of all
settings come from the same two solves (one for the signal part of y, one for the noise part).

**Prefix least squares** (`prefix_min_norm`): one QR of X gives every p ≤ n (β̂_p = R_p⁻¹ Q_pᵀ y, since
X_p = Q_p R_p for the leading blocks); for p > n the dual form β̂_p = X_pᵀ (X_p X_pᵀ)⁻¹ y uses the Gram
matrix accumulated column block by column block. Both equal ``np.linalg.lstsq``'s minimum-norm solution.

**Measured at the defaults** (20 trials, medians; ~1.2 s on one core). At s = 1 the actual SNR is ≈ 3.9
(null risk 1.19): the Gaussian A rescaled to spectral radius 0.9 is non-normal, and its transient growth
makes Var(θᵀz_{T+1}) ≈ 0.95, not the ≈ 0.53 implied by science.md's null risk of 0.78. At s = 0.74 (SNR
≈ 2.1, null 0.77) the curve is science.md's: 0.73–0.78 for p ≤ 20, 2.2 at p = 80, 143 at p = n = 100
(science.md 176), 1.3 at p = 160, 0.58 at p = 6n. The peak sits at p = n at every SNR; the *first descent*
is degenerate (best p < n/2 within 5% of p = 1) only at low SNR: min_{p<n/2} / risk(p = 1) is 1.000, 0.977,
0.945, 0.898, 0.797 at s = 0.25, 0.5, 0.74, 1, 4; and p = 6n beats every p < n only from s ≈ 0.5 on
(risk ratio 1.15 at s = 0.25, 0.73 at s = 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.claims import Claim, check
from overtrain.config import BaseConfig, NotInId
from overtrain.seed import numpy_rng
from overtrain.threads import blas_threads

PAPER_SNR = 1.0
"""The signal multiplier s of the paper's setting (science.md §4)."""


def dense_grid(lo: int, hi: int, center: int, points: int = 30) -> list[int]:
    """Integers in [lo, hi]: `points` log-spaced ones, every second integer in [0.8·center, 1.2·center],
    and lo, center and hi themselves (where in range), sorted and distinct."""
    grid = {int(round(v)) for v in np.geomspace(lo, hi, points)} if hi > lo else set()
    grid |= set(range(math.ceil(0.8 * center), math.floor(1.2 * center) + 1, 2))
    grid |= {lo, center, hi}
    return sorted(p for p in grid if lo <= p <= hi)


class HeadTuningConfig(BaseConfig):
    """Head tuning on linear-Gaussian HMM representations: the generative model, sizes, grid and SNRs."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    latent_dim: int = Field(20, ge=1, le=10_000)
    """m: dimension of the latent tokens z_t."""

    spectral_radius: float = Field(0.9, gt=0, le=10)
    """ρ: the transition matrix A is a Gaussian matrix rescaled so that max |eigenvalue| = ρ."""

    latent_noise: float = Field(0.5, ge=0, le=100)
    """ℓ: standard deviation of the latent transition noise (z_{t+1} = A z_t + ℓ ε_t)."""

    seq_len: int = Field(8, ge=1, le=10_000)
    """T: the representation reads z_T (after T − 1 transitions from z_1); the target reads z_{T+1}."""

    repr_dim: int = Field(600, ge=1, le=100_000)
    """D: dimension of the representation x = C z_T + r u, and the largest head width p."""

    repr_noise: float = Field(1.0, gt=0, le=100)
    """r: standard deviation of the representation noise u. Must be > 0: without it x has rank m and
    least squares on more than m coordinates is rank-deficient."""

    target_noise: float = Field(0.5, gt=0, le=100)
    """σ: standard deviation of the target noise (variance σ² = 0.25 at the default)."""

    n_train: int = Field(100, ge=1, le=100_000)
    """n: training examples of the head (the risk peaks at p = n)."""

    n_test: int = Field(2000, ge=1, le=10_000_000)
    """Test examples per trial on which the risk (test MSE) is measured."""

    p_grid: list[int] | None = None
    """Head widths p (coordinates of x used), each in [1, repr_dim]. None: the default grid, log-spaced
    over [1, repr_dim] plus every second integer in [0.8 n, 1.2 n] and n itself (`ps()`)."""

    trials: int = Field(20, ge=1, le=100_000)
    """Independent trials: each redraws A, C, θ, the coordinate order and both samples."""

    seed: int = Field(0, ge=0)
    """Root seed of every random stream."""

    snrs: list[float] = [PAPER_SNR]
    """Signal multipliers s of the SNR study: y = s θᵀ z_{T+1} + σ e, so the signal-to-noise ratio
    Var(s θᵀ z_{T+1}) / σ² scales as s². 1.0 is the paper's setting (actual SNR ≈ 3.9 at the defaults;
    science.md's numbers correspond to s ≈ 0.74, SNR ≈ 2.1); the actual SNR of every setting is reported
    (`HeadTuningResult.snr_actual`)."""

    @field_validator("p_grid")
    @classmethod
    def _p_grid(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one p (or leave p_grid out for the default grid)")
        if len(set(value)) != len(value):
            raise ValueError("p_grid values must be distinct")
        if min(value) < 1:
            raise ValueError("every p must be >= 1")
        return sorted(value)

    @field_validator("snrs")
    @classmethod
    def _snrs(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one SNR multiplier")
        if any(not (s > 0 and math.isfinite(s)) for s in value):
            raise ValueError("every SNR multiplier must be a positive finite number")
        if len(set(value)) != len(value):
            raise ValueError("SNR multipliers must be distinct")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadTuningConfig:
        if self.p_grid is not None and max(self.p_grid) > self.repr_dim:
            raise ValueError(f"p_grid value {max(self.p_grid)} exceeds repr_dim ({self.repr_dim})")
        # One trial holds its n_test x repr_dim test representations in memory at once.
        if self.n_test * self.repr_dim > 50_000_000:
            raise ValueError(
                f"n_test · repr_dim = {self.n_test * self.repr_dim:,} floats exceeds 5e7 (0.4 GB per trial)"
            )
        return self

    threads: int = NotInId(1, ge=1, le=256)
    """BLAS threads while the run executes (restored afterwards). 1 by default: the matrices are ~100 x 600,
    too small to split, and on a busy 2-core machine 2 threads made the default run 6x slower."""

    def ps(self) -> list[int]:
        """The head widths p, ascending: `p_grid`, or the default grid dense around p = n."""
        if self.p_grid is not None:
            return list(self.p_grid)
        return dense_grid(1, self.repr_dim, self.n_train)


# --- least squares on column prefixes ------------------------------------------------------------------


def prefix_min_norm(x: np.ndarray, y: np.ndarray, ps: Sequence[int]) -> np.ndarray:
    """Minimum-norm least-squares coefficients on every column prefix ``x[..., :, :p]``, p in `ps`.

    For p ≤ n one reduced QR, X_{≤p_max} = Q R, serves every prefix: X_p = Q_p R_p with Q_p, R_p the
    leading blocks, so β̂_p = R_p⁻¹ Q_pᵀ y. For p > n the dual form β̂_p = X_pᵀ (X_p X_pᵀ)⁻¹ y, with the
    n x n Gram matrix accumulated over column blocks between grid points. Both are pinv(X_p) y when X_p
    has full rank (min(n, p)), which Gaussian representation noise makes almost sure. Cost: one n x n QR,
    one n x n solve per grid point and O(n² D) for the Gram matrices, instead of one SVD per p.

    The dual form squares the condition number of X_p; just above p = n that is κ(X_p)² ~ 10⁴–10⁶ at
    n = 100, far from float64's limit.

    Args:
        x: [..., n, D] design (leading dims are batch dims, e.g. trials).
        y: [..., n, k] targets (k right-hand sides).
        ps: prefix widths, each in [1, D].

    Returns:
        [..., G, D, k] coefficients, G = len(ps) in the order given; row p of the block of width p and
        beyond is zero (the head ignores the unused coordinates).
    """
    n, D = x.shape[-2:]
    k = y.shape[-1]
    ps = [int(p) for p in ps]
    if any(not 1 <= p <= D for p in ps):
        raise ValueError(f"every p must be in [1, {D}], got {ps}")
    batch = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    out = np.zeros((*batch, len(ps), D, k))
    small = [(g, p) for g, p in enumerate(ps) if p <= n]
    if small:
        width = max(p for _, p in small)
        q, r = np.linalg.qr(x[..., :, :width])
        c = np.swapaxes(q, -1, -2) @ y
        for g, p in small:
            # R_p is upper triangular: LU finds every pivot on the diagonal, so this is back-substitution.
            out[..., g, :p, :] = np.linalg.solve(r[..., :p, :p], c[..., :p, :])
    large = sorted((p, g) for g, p in enumerate(ps) if p > n)
    gram = np.zeros((*x.shape[:-2], n, n))
    done = 0
    for p, g in large:
        block = x[..., :, done:p]
        gram = gram + block @ np.swapaxes(block, -1, -2)
        done = p
        alpha = np.linalg.solve(gram, y)
        out[..., g, :p, :] = np.swapaxes(x[..., :, :p], -1, -2) @ alpha
    return out


# --- one trial's random problem ------------------------------------------------------------------------


@dataclass(frozen=True)
class HmmWorld:
    """One trial's HMM and head-tuning task (numpy float64).

    Attributes:
        transition: A, [m, m], spectral radius ρ.
        readout: C, [D, m], rows already in the trial's random coordinate order.
        theta: θ, [m], the target direction at s = 1.
        target_cov: Σ_{T+1} = Cov(z_{T+1}), [m, m], exact.
    """

    transition: np.ndarray
    readout: np.ndarray
    theta: np.ndarray
    target_cov: np.ndarray

    @property
    def signal_var(self) -> float:
        """Var(θᵀ z_{T+1}) at s = 1 (exact, population)."""
        return float(self.theta @ self.target_cov @ self.theta)


def make_world(cfg: HeadTuningConfig, trial: int) -> HmmWorld:
    """Draw trial `trial`'s A, C (in a random coordinate order) and θ; compute Σ_{T+1} exactly."""
    m = cfg.latent_dim
    rng = numpy_rng(cfg.seed, "hmm_head", "world", trial)
    a = rng.standard_normal((m, m))
    a *= cfg.spectral_radius / np.abs(np.linalg.eigvals(a)).max()
    c = rng.standard_normal((cfg.repr_dim, m)) / math.sqrt(m)
    theta = rng.standard_normal(m) / math.sqrt(m)
    # C's rows are i.i.d., so a random coordinate order changes nothing in distribution; it is drawn
    # anyway so that "the first p coordinates" are a random subset, as in the paper's protocol.
    c = c[rng.permutation(cfg.repr_dim)]
    cov = np.eye(m)
    for _ in range(cfg.seq_len):  # Σ_1 = I -> Σ_{T+1}: T transitions
        cov = a @ cov @ a.T + cfg.latent_noise**2 * np.eye(m)
    return HmmWorld(a, c, theta, cov)


def sample(
    cfg: HeadTuningConfig, world: HmmWorld, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`size` examples: representations x [size, D], target signal θᵀz_{T+1} [size] (s = 1) and target
    noise σ e [size]; the target at multiplier s is ``s · signal + noise``."""
    m = cfg.latent_dim
    z = rng.standard_normal((size, m))
    for _ in range(cfg.seq_len - 1):  # z_1 -> z_T
        z = z @ world.transition.T + cfg.latent_noise * rng.standard_normal((size, m))
    z_next = z @ world.transition.T + cfg.latent_noise * rng.standard_normal((size, m))
    x = z @ world.readout.T + cfg.repr_noise * rng.standard_normal((size, cfg.repr_dim))
    return x, z_next @ world.theta, cfg.target_noise * rng.standard_normal(size)


# --- the result ----------------------------------------------------------------------------------------


@dataclass
class HeadTuningResult:
    """Measurements of `run_head_tuning`.

    Attributes:
        snrs: [S] signal multipliers s.
        ps: [G] head widths p, ascending.
        risk: [S, T, G] test MSE of the min-norm head (squared target units) per (s, trial, p).
        null_risk: [S, T] test MSE of predicting 0 (the test mean of y²).
        signal_var: [T] population Var(θᵀ z_{T+1}) per trial at s = 1.
        n_train: n, the number of training examples.
        target_noise: σ.
        wall_s: wall time of the run in seconds.
    """

    snrs: np.ndarray
    ps: np.ndarray
    risk: np.ndarray
    null_risk: np.ndarray
    signal_var: np.ndarray
    n_train: int
    target_noise: float
    wall_s: float | None = field(default=None, compare=False)

    @property
    def snr_actual(self) -> np.ndarray:
        """[S] actual SNR s² Var(θᵀ z_{T+1}) / σ² per setting, averaged over trials."""
        return self.snrs**2 * float(self.signal_var.mean()) / self.target_noise**2

    def snr_index(self, snr: float) -> int:
        """Index of multiplier `snr` in `snrs` (matched to a relative 1e-9)."""
        hits = np.flatnonzero(np.isclose(self.snrs, snr, rtol=1e-9, atol=0))
        if hits.size == 0:
            raise KeyError(f"SNR multiplier {snr} not run; have {self.snrs.tolist()}")
        return int(hits[0])

    def median_risk(self, snr: float = PAPER_SNR) -> np.ndarray:
        """[G] median over trials of the risk at multiplier `snr`."""
        return np.median(self.risk[self.snr_index(snr)], axis=0)

    def first_descent(self, snr: float = PAPER_SNR) -> tuple[float, int] | None:
        """(min over p < n/2 of the median risk / median risk at the smallest p, the p attaining it);
        None when no grid point is below n/2. A ratio near 1 is the degenerate first descent."""
        curve = self.median_risk(snr)
        below = np.flatnonzero(self.ps < self.n_train / 2)
        if below.size == 0:
            return None
        best = below[np.argmin(curve[below])]
        return float(curve[best] / curve[0]), int(self.ps[best])

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``: per (s, trial, p) a ``risk`` row (snr, snr_actual, p, trial,
        risk) and per (s, trial) a ``null`` row (the same keys, p None)."""
        out: list[dict[str, Any]] = []
        actual = self.snr_actual
        for si, snr in enumerate(self.snrs.tolist()):
            for t in range(self.risk.shape[1]):
                base = {"snr": snr, "snr_actual": float(actual[si]), "trial": t}
                out += [
                    {"record": "risk", **base, "p": p, "risk": float(self.risk[si, t, g])}
                    for g, p in enumerate(self.ps.tolist())
                ]
                out.append({"record": "null", **base, "p": None, "risk": float(self.null_risk[si, t])})
        return out

    def claims(self, snr: float = PAPER_SNR) -> list[Claim]:
        """science.md §4's checks on the median-over-trials risk curve at multiplier `snr` (the paper's
        setting by default); each claim's detail reports the same statistic at every multiplier run.

        1. The risk peaks at p = n: argmax over the grid within ±5% of n.
        2. Degenerate first descent: min over p < n/2 within 5% of the risk at the smallest p.
        3. The widest head (p = 6n at the defaults) beats every p < n.
        """
        n = self.n_train
        if not np.isclose(self.snrs, snr, rtol=1e-9, atol=0).any():
            reason = f"SNR multiplier {snr} was not run (have {self.snrs.tolist()})"
            return [check(*c[:2], None, None, c[2], detail=reason) for c in (_PEAK, _FIRST, _WIDE)]

        def per_snr(stat: Callable[[float], str]) -> str:
            return "; ".join(
                f"s={s:g} (SNR {a:.3g}): {stat(s)}" for s, a in zip(self.snrs.tolist(), self.snr_actual)
            )

        def peak(s: float) -> int:
            return int(self.ps[np.argmax(self.median_risk(s))])

        def first(s: float) -> str:
            ratio, p_min = self.first_descent(s)  # type: ignore[misc]
            return f"ratio {ratio:.4f} at p = {p_min} (risk {self.median_risk(s)[0]:.4g} at p = {self.ps[0]})"

        def wide(s: float) -> float:
            curve = self.median_risk(s)
            return float(curve[-1] / curve[self.ps < n].min())

        curve = self.median_risk(snr)
        closest = int(self.ps[np.argmin(np.abs(self.ps - n))])
        p_star = peak(snr)
        out = [
            check(
                *_PEAK[:2],
                p_star,
                abs(p_star - n) <= 0.05 * n,
                _PEAK[2],
                detail=f"n = {n}, grid point closest to n {closest}; median risk {curve.max():.4g} at the "
                f"argmax. Argmax per SNR: " + per_snr(lambda s: f"p = {peak(s)}"),
            )
        ]
        fd = self.first_descent(snr)
        if fd is None:
            out.append(
                check(*_FIRST[:2], None, None, _FIRST[2], detail=f"no grid point below n/2 = {n / 2:g}")
            )
        else:
            out.append(
                check(*_FIRST[:2], fd[0], fd[0] >= 0.95, _FIRST[2], detail="Per SNR: " + per_snr(first))
            )
        if self.ps[-1] <= n or not (self.ps < n).any():
            out.append(check(*_WIDE[:2], None, None, _WIDE[2], detail="need grid points below and above n"))
        else:
            ratio = wide(snr)
            null = float(np.median(self.null_risk[self.snr_index(snr)]))
            out.append(
                check(
                    *_WIDE[:2],
                    ratio,
                    ratio < 1,
                    _WIDE[2],
                    detail=f"p = {self.ps[-1]} (= {self.ps[-1] / n:g} n): median risk {curve[-1]:.4g}, null "
                    f"risk {null:.4g}. Per SNR: " + per_snr(lambda s: f"ratio {wide(s):.4f}"),
                )
            )
        return out


_PEAK = (
    "head-tuning risk peaks at p = n (double descent in model complexity)",
    "p maximising the median test MSE over trials",
    "argmax within ±5% of n",
)
_FIRST = (
    "the first descent is degenerate: the best small head is the smallest",
    "min over p < n/2 of the median test MSE / median test MSE at the smallest p",
    ">= 0.95 (min within 5% of the risk at the smallest p)",
)
_WIDE = (
    "the widest head beats every under-parameterised head",
    "median test MSE at the largest p / min over p < n of the median test MSE",
    "< 1",
)


# --- the experiment ------------------------------------------------------------------------------------


def run_trial(cfg: HeadTuningConfig, trial: int, ps: Sequence[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """One trial: ([S, G] risk, [S] null risk, population signal variance at s = 1)."""
    world = make_world(cfg, trial)
    x, signal, noise = sample(cfg, world, cfg.n_train, numpy_rng(cfg.seed, "hmm_head", "train", trial))
    x_te, signal_te, noise_te = sample(cfg, world, cfg.n_test, numpy_rng(cfg.seed, "hmm_head", "test", trial))
    coef = prefix_min_norm(x, np.stack([signal, noise], axis=1), ps)  # [G, D, 2]
    pred = x_te @ coef  # [G, n_test, 2]: predictions of the signal part and of the noise part of y
    # Test error at multiplier s: s·(signal fit − signal) + (noise fit − noise), for every s at once.
    err_signal = pred[..., 0] - signal_te
    err_noise = pred[..., 1] - noise_te
    s = np.asarray(cfg.snrs)[:, None, None]
    risk = np.mean((s * err_signal + err_noise) ** 2, axis=-1)
    null = np.mean((s[:, :, 0] * signal_te + noise_te) ** 2, axis=-1)
    return risk, null, world.signal_var


def run_head_tuning(
    cfg: HeadTuningConfig, progress: Callable[[int, int], None] | None = None
) -> HeadTuningResult:
    """Every trial's min-norm heads at every p and SNR multiplier.

    Args:
        cfg: the experiment.
        progress: ``progress(trials_done, trials)`` after each trial.

    Returns:
        The measurements (`HeadTuningResult`), with ``wall_s`` set.
    """
    with blas_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: HeadTuningConfig, progress: Callable[[int, int], None] | None) -> HeadTuningResult:
    t0 = time.perf_counter()
    ps = cfg.ps()
    S, T, G = len(cfg.snrs), cfg.trials, len(ps)
    risk = np.empty((S, T, G))
    null = np.empty((S, T))
    signal_var = np.empty(T)
    for t in range(T):
        risk[:, t], null[:, t], signal_var[t] = run_trial(cfg, t, ps)
        if progress is not None:
            progress(t + 1, T)
    return HeadTuningResult(
        snrs=np.array(cfg.snrs, dtype=np.float64),
        ps=np.array(ps),
        risk=risk,
        null_risk=null,
        signal_var=signal_var,
        n_train=cfg.n_train,
        target_noise=cfg.target_noise,
        wall_s=time.perf_counter() - t0,
    )
