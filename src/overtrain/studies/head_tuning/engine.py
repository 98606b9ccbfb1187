"""Head tuning on the representations of a linear-Gaussian HMM (Luo, Wang, Huang 2024).

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

Rows: ``record = 'risk'`` per (s, trial, p) and ``'null'`` per (s, trial). Measured curves at the
defaults and their SNRs: docs/double_descent.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overtrain.seed import numpy_rng
from overtrain.studies.head_tuning.config import HeadTuningConfig
from overtrain.threads import blas_threads

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


def compute(cfg: HeadTuningConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    """The study's run: every (s, trial, p) risk row and every (s, trial) null row."""
    result = run_head_tuning(cfg, progress=progress)
    return result.rows(), {"wall_s": result.wall_s, "snr_actual": result.snr_actual.tolist()}
