"""Forecast the inflection point T* of catastrophic overtraining from the checks of a run still going.

A check at T tokens measures the base loss L(T) (nats/token) and a sensitivity Δ(T) (nats/token): the rise
of the loss under Gaussian weight noise, or the forgetting of a short fine-tune. The quantity whose
minimum is T* is their sum, P(T) = L(T) + Δ(T) (Springer et al. 2025, "Overtrained language models are
harder to fine-tune", decompose the post-fine-tuning loss this way). Two laws are fitted, each to every
check so far:

    L(T) = E + A·T^(−α)      (A, α > 0: the loss still falls, ever more slowly)
    Δ(T) = D·T^β             (D > 0; β > 0: the sensitivity grows)

T* is where the base loss stops out-running the sensitivity, −dL/dlog T = dΔ/dlog T:

    α·A·T^(−α) = β·D·T^β   ⇒   T* = (α·A / (β·D))^(1/(α+β)),

a minimum of P (P'' > 0 there); with β ≤ 0 the sensitivity never catches up and T* = ∞. The fit of L is
profiled over α (for fixed α, E and A are a linear least-squares fit); Δ is fitted by least squares on
log Δ. The forecast extrapolates: T* may lie beyond the last check, which is the point.

Interval: a bootstrap that resamples, per replicate, the held-out batches and the noise draws (one index
set for every check: common random numbers, as the checks themselves share batches and draws) and then the
fits' residuals over checks. The interval is the replicates' (5%, 95%) quantiles of T*, and
P(T* ≤ T) is their share at or below T. Replicates whose fits have no minimum count as T* = ∞.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHAS = np.geomspace(0.02, 3.0, 80)
"""The grid the loss exponent α is profiled over (a power law's α for LM losses is ~0.05–0.5)."""

MIN_CHECKS = 4
"""Fewest checks to fit two 2- and 3-parameter laws with at least one residual degree of freedom."""


@dataclass(frozen=True)
class Laws:
    """The fitted laws L(T) = E + A·T^(−α) and Δ(T) = D·T^β (T in tokens, L and Δ in nats/token)."""

    E: float
    A: float
    alpha: float
    D: float
    beta: float

    @property
    def t_star(self) -> float:
        """T* in tokens (∞ when the laws have no minimum of L + Δ: A ≤ 0 means L no longer falls, and then
        T* is the first check, which the caller clips to; β ≤ 0 means Δ never grows)."""
        if self.beta <= 0 or self.D <= 0:
            return math.inf
        if self.A <= 0:
            return 0.0
        log_t = (math.log(self.alpha * self.A) - math.log(self.beta * self.D)) / (self.alpha + self.beta)
        return math.exp(min(log_t, 700.0))

    def loss(self, t: np.ndarray) -> np.ndarray:
        return self.E + self.A * np.asarray(t, dtype=float) ** -self.alpha

    def delta(self, t: np.ndarray) -> np.ndarray:
        return self.D * np.asarray(t, dtype=float) ** self.beta


def fit_loss(tokens: np.ndarray, loss: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """``(E, A, α, residuals)`` of the least-squares fit L = E + A·T^(−α), α profiled over `ALPHAS`.
    Tokens are scaled by the first check so T^(−α) stays O(1) over the grid."""
    t = np.asarray(tokens, dtype=float) / float(tokens[0])
    y = np.asarray(loss, dtype=float)
    x = t[None, :] ** -ALPHAS[:, None]  # [alphas, checks]
    xc = x - x.mean(axis=1, keepdims=True)
    sxx = np.einsum("ij,ij->i", xc, xc)
    a_all = np.where(sxx > 0, xc @ (y - y.mean()) / np.where(sxx > 0, sxx, 1.0), 0.0)
    e_all = y.mean() - a_all * x.mean(axis=1)
    resid_all = y[None, :] - e_all[:, None] - a_all[:, None] * x
    i = int(np.argmin(np.einsum("ij,ij->i", resid_all, resid_all)))
    e, a, alpha, resid = float(e_all[i]), float(a_all[i]), float(ALPHAS[i]), resid_all[i]
    # back to raw tokens: A·(T/T0)^(−α) = (A·T0^α)·T^(−α)
    return e, a * float(tokens[0]) ** alpha, alpha, resid


def fit_delta(tokens: np.ndarray, delta: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """``(D, β, residuals of log Δ)`` of the least-squares fit log Δ = log D + β·log T; None when some Δ
    is not positive (no power law through it)."""
    d = np.asarray(delta, dtype=float)
    if np.any(d <= 0) or not np.all(np.isfinite(d)):
        return None
    x = np.log(np.asarray(tokens, dtype=float))
    y = np.log(d)
    xc = x - x.mean()
    beta = float(xc @ (y - y.mean())) / float(xc @ xc)
    log_d = float(y.mean() - beta * x.mean())
    return math.exp(log_d), beta, y - log_d - beta * x


def fit_laws(tokens, loss, delta) -> Laws | None:
    """Both laws fitted to the checks so far; None below `MIN_CHECKS` checks or with a non-positive Δ."""
    t = np.asarray(tokens, dtype=float)
    if t.size < MIN_CHECKS:
        return None
    fd = fit_delta(t, delta)
    if fd is None:
        return None
    e, a, alpha, _ = fit_loss(t, loss)
    return Laws(e, a, alpha, fd[0], fd[1])


@dataclass(frozen=True)
class Forecast:
    """T* forecast from the checks up to `now` (tokens).

    Attributes:
        now: tokens at the newest check.
        t_star: the point forecast, tokens (∞: the laws have no minimum).
        low, high: the bootstrap (5%, 95%) interval of T*, tokens.
        replicates: bootstrap T* values, tokens (∞ where a replicate has no minimum).
        laws: the point fit.
    """

    now: float
    t_star: float
    low: float
    high: float
    replicates: np.ndarray
    laws: Laws

    def prob_before(self, tokens: float) -> float:
        """P(T* ≤ tokens) over the bootstrap replicates."""
        return float(np.mean(self.replicates <= tokens))

    def prob_within(self, horizon_doublings: float) -> float:
        """P(T* ≤ now · 2^horizon): the chance the inflection comes within the next `horizon` doublings of
        tokens (or has already passed)."""
        return self.prob_before(self.now * 2.0**horizon_doublings)


def forecast(
    tokens,
    base: np.ndarray,
    perturbed: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> Forecast | None:
    """Forecast T* from checks at `tokens` (increasing), with `base` the loss per check and held-out batch
    (``[checks, batches]``) and `perturbed` the loss under each noise draw (``[checks, batches, draws]``),
    or any sensitivity measured per batch and draw as a loss (e.g. the pre-training loss after a short
    fine-tune, with draws = 1). Δ = mean perturbed − mean base. None when the point fit is impossible
    (fewer than `MIN_CHECKS` checks, or some Δ ≤ 0)."""
    t = np.asarray(tokens, dtype=float)
    b = np.asarray(base, dtype=float)
    p = np.asarray(perturbed, dtype=float)
    if b.ndim == 1:
        b = b[:, None]
    if p.ndim == 1:
        p = p[:, None, None]
    elif p.ndim == 2:
        p = p[:, :, None]
    n_checks, n_batches, n_draws = p.shape
    if b.shape != (n_checks, n_batches) or t.shape != (n_checks,):
        raise ValueError(f"shapes disagree: tokens {t.shape}, base {b.shape}, perturbed {p.shape}")
    loss = b.mean(axis=1)
    delta = p.mean(axis=(1, 2)) - loss
    laws = fit_laws(t, loss, delta)
    if laws is None:
        return None
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for r in range(n_boot):
        bi = rng.integers(0, n_batches, n_batches)
        di = rng.integers(0, n_draws, n_draws)
        lr = b[:, bi].mean(axis=1)
        dr = p[:, bi][:, :, di].mean(axis=(1, 2)) - lr
        reps[r] = _residual_replicate(t, lr, dr, rng)
    t_star = max(laws.t_star, 0.0)
    low, high = (float(v) for v in np.quantile(reps, [0.05, 0.95], method="inverted_cdf"))
    return Forecast(float(t[-1]), t_star, low, high, reps, laws)


def _residual_replicate(t: np.ndarray, loss: np.ndarray, delta: np.ndarray, rng) -> float:
    """T* of one residual-bootstrap replicate of both fits (∞ when Δ has a non-positive check)."""
    fd = fit_delta(t, delta)
    if fd is None:
        return math.inf
    e, a, alpha, r_loss = fit_loss(t, loss)
    d0, beta, r_delta = fd
    n = t.size
    # residuals rescaled by sqrt(n / (n − k)): raw residuals under-state the noise by the fitted parameters
    loss_star = e + a * t**-alpha + r_loss[rng.integers(0, n, n)] * math.sqrt(n / max(n - 3, 1))
    log_delta_star = (
        math.log(d0) + beta * np.log(t) + r_delta[rng.integers(0, n, n)] * math.sqrt(n / max(n - 2, 1))
    )
    laws = fit_laws(t, loss_star, np.exp(log_delta_star))
    return math.inf if laws is None else max(laws.t_star, 0.0)
