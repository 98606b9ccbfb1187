"""Forecast the inflection point T* of catastrophic overtraining from the checks of a run still going.

A check at T tokens measures the base loss L(T) (nats/token) and a sensitivity Δ(T) (nats/token): the rise
of the loss under Gaussian weight noise, or the forgetting of a short fine-tune. The quantity whose
minimum is T* is their sum, P(T) = L(T) + Δ(T) (Springer et al. 2025, "Overtrained language models are
harder to fine-tune", decompose the post-fine-tuning loss this way). T* is where the base loss stops
out-running the sensitivity, −dL/dlog T = dΔ/dlog T, so the forecaster models the two *rates* as power
laws in T, u = T/T₀ (T₀ the first check fitted):

    −dL/dlog T = α·A·u^(−α)   ⇔   L(T) = E + A·u^(−α)                  (A, α > 0: L falls, ever slower)
     dΔ/dlog T = C·u^κ        ⇔   Δ(T) = F + C·u^κ/κ  (F + C·log u at κ = 0)

κ > 0 is a sensitivity that grows without bound (the paper's picture, Δ ∝ T^κ when F = 0); κ < 0 one that
saturates (in the two-layer linear theory model both rates are power laws: learning direction i with
s_i ∝ i^(−p) lowers L by s_i²/2 and raises ‖W‖² — so Δ — by ∝ s_i, at T ∝ 1/s_i). The rates meet at

    u* = (α·A / C)^(1/(α+κ)),    T* = T₀·u*,

a minimum of L + Δ when α + κ > 0 (the loss's rate falls faster than the sensitivity's). With C ≤ 0 the
sensitivity does not grow and T* = ∞; with α + κ ≤ 0 the rates meet at most once from the other side and
T* is ∞ if the loss still out-runs the sensitivity at the newest check, else 0 (already past). Both laws
are fitted by least squares, profiled over the exponent (for a fixed exponent the other two parameters are
a linear fit). The forecast extrapolates: T* may lie beyond the last check, which is the point.

The laws describe the *decelerating* phase of training. Small models first sit on a plateau and then
learn fast, and while the loss accelerates (−dL/dlog T grows) no power law with α > 0 holds: fitted
there, the laws read the plateau as "the sensitivity already out-runs the loss" and place T* at the
present. So when the loss's fastest fall (−ΔL/Δlog₂T over spans of half a doubling) is more than twice
its first span's — it accelerated — only the checks from where that rate has halved are fitted
(`regime_start`), and there is no forecast until then.

Interval: a bootstrap that resamples, per replicate, the held-out batches and the noise draws (one index
set for every check: common random numbers, as the checks themselves share batches and draws) and then the
fits' residuals over checks. The interval is the replicates' (5%, 95%) quantiles of T*, and
P(T* ≤ T) is their share at or below T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHAS = np.geomspace(0.02, 4.0, 90)
"""The grid the loss exponent α is profiled over (LM losses have α ~0.05–0.5; the theory model ~1.3)."""

KAPPAS = np.concatenate([-np.geomspace(3.0, 0.02, 45), [0.0], np.geomspace(0.02, 3.0, 45)])
"""The grid the sensitivity-rate exponent κ is profiled over, both signs (saturating and growing)."""

MIN_CHECKS = 5
"""Fewest checks to fit two 3-parameter laws with at least two residual degrees of freedom."""


RATE_DROP = 0.5
"""`regime_start` fits from where the loss's rate has fallen to this fraction of its peak."""

ACCELERATION = 2.0
"""The loss counts as having accelerated when its fastest fall is this many times its first span's (noise
alone moves the fastest span around; it does not double the rate)."""

RATE_SPAN = 0.5
"""Doublings of tokens over which `regime_start` measures the loss's rate of fall (shorter spans let one
noisy check decide)."""


def regime_start(tokens, loss) -> int:
    """Index of the first check the laws are fitted from (module docstring).

    The loss's rate of fall is measured over spans of at least `RATE_SPAN` doublings,
    r_k = −(L_j − L_k)/(log₂T_j − log₂T_k) with j the first check that far after k. When the fastest fall
    is at most `ACCELERATION` times the first span's, the loss was decelerating from the start: 0.
    Otherwise the loss first accelerated (a plateau, then fast learning), and the fit starts at the first
    check after the fastest fall whose rate has fallen to `RATE_DROP` of it — a fall's tail read as a
    power law makes the loss's rate decay too fast and T* too early. Until then there is no regime to fit,
    and the index returned is the number of checks."""
    x = np.log2(np.asarray(tokens, dtype=float))
    y = np.asarray(loss, dtype=float)
    j = np.searchsorted(x, x + RATE_SPAN - 1e-9)
    k = np.flatnonzero(j < x.size)
    if k.size == 0:
        return 0
    rate = (y[k] - y[j[k]]) / (x[j[k]] - x[k])
    peak = int(np.argmax(rate))
    if rate[peak] <= ACCELERATION * rate[0]:
        return 0
    halved = np.flatnonzero(rate[peak:] <= rate[peak] * RATE_DROP)
    return int(k[peak + halved[0]]) if halved.size else x.size


@dataclass(frozen=True)
class Laws:
    """The fitted laws L = E + A·u^(−α) and Δ = F + C·u^κ/κ, u = T/t0 (L, Δ, E, A, F, C in nats/token)."""

    E: float
    A: float
    alpha: float
    F: float
    C: float
    kappa: float
    t0: float

    def loss(self, t) -> np.ndarray:
        return self.E + self.A * (np.asarray(t, dtype=float) / self.t0) ** -self.alpha

    def delta(self, t) -> np.ndarray:
        u = np.asarray(t, dtype=float) / self.t0
        return self.F + self.C * _basis(u, self.kappa)

    def loss_rate(self, t) -> np.ndarray:
        """−dL/dlog T, nats per e-fold of tokens."""
        return self.alpha * self.A * (np.asarray(t, dtype=float) / self.t0) ** -self.alpha

    def delta_rate(self, t) -> np.ndarray:
        """dΔ/dlog T, nats per e-fold of tokens."""
        return self.C * (np.asarray(t, dtype=float) / self.t0) ** self.kappa

    def rise_after(self, now: float) -> float:
        """(P(2·T*) − P(T*)) / P(T*), P = L + Δ: the relative cost of a doubling past T* (past T* already:
        of the doubling after `now`; 0 when there is no T*)."""
        t = self.t_star(now)
        if not math.isfinite(t):
            return 0.0
        t = t if t > 0 else now
        p = float(self.loss(t) + self.delta(t))
        return float(self.loss(2 * t) + self.delta(2 * t)) / p - 1

    def t_star(self, now: float) -> float:
        """T* in tokens (module docstring); `now` decides the no-crossing case (∞ if the loss still
        out-runs the sensitivity there, else 0)."""
        if self.C <= 0:
            return math.inf
        if self.A <= 0:
            return 0.0
        if self.alpha + self.kappa <= 0:
            return math.inf if self.loss_rate(now) > self.delta_rate(now) else 0.0
        log_u = (math.log(self.alpha * self.A) - math.log(self.C)) / (self.alpha + self.kappa)
        return self.t0 * math.exp(log_u) if log_u < 600.0 else math.inf


def _basis(u: np.ndarray, kappa: float) -> np.ndarray:
    """u^κ/κ, whose log-derivative is u^κ; log u at κ = 0 (its limit up to a constant)."""
    return np.log(u) if kappa == 0 else u**kappa / kappa


def fit_laws(tokens, loss, delta) -> tuple[Laws, np.ndarray, np.ndarray] | None:
    """Both laws fitted to the checks (`Laws`, loss residuals, Δ residuals); None below `MIN_CHECKS`."""
    t = np.asarray(tokens, dtype=float)
    if t.size < MIN_CHECKS:
        return None
    gl, a, e = _ols_many(_loss_basis(t), np.asarray(loss, dtype=float)[None, :])
    gd, c, f = _ols_many(_delta_basis(t), np.asarray(delta, dtype=float)[None, :])
    laws = Laws(
        float(e[0]),
        float(a[0]),
        float(ALPHAS[gl[0]]),
        float(f[0]),
        float(c[0]),
        float(KAPPAS[gd[0]]),
        float(t[0]),
    )
    r_loss = np.asarray(loss, dtype=float) - laws.loss(t)
    r_delta = np.asarray(delta, dtype=float) - laws.delta(t)
    return laws, r_loss, r_delta


@dataclass(frozen=True)
class Forecast:
    """T* forecast from the checks up to `now` (tokens).

    Attributes:
        now: tokens at the newest check.
        t_star: the point forecast, tokens (∞: the sensitivity never catches up; 0: already past).
        low, high: the bootstrap (5%, 95%) interval of T*, tokens.
        replicates: bootstrap T* values, tokens.
        laws: the point fit.
        rises: per replicate, the forecast relative rise of L + Δ over the doubling after T*
            (`Laws.rise_after`): how much a doubling past T* would cost; for a T* already behind the
            newest check, the rise the replicate's checks show since T* instead.
    """

    now: float
    t_star: float
    low: float
    high: float
    replicates: np.ndarray
    laws: Laws
    rises: np.ndarray

    def prob_before(self, tokens: float, min_rise: float = 0.0) -> float:
        """P(T* ≤ tokens, and the doubling after T* raises L + Δ by at least `min_rise`) over the bootstrap
        replicates: a minimum too shallow to matter is not a warning."""
        return float(np.mean((self.replicates <= tokens) & (self.rises >= min_rise)))

    def prob_within(self, horizon_doublings: float, min_rise: float = 0.0) -> float:
        """P(T* ≤ now · 2^horizon, with a rise of at least `min_rise` after it): the chance a material
        inflection comes within the next `horizon` doublings of tokens (or has already passed)."""
        return self.prob_before(self.now * 2.0**horizon_doublings, min_rise)


def forecast(
    tokens,
    base: np.ndarray,
    perturbed: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    window_doublings: float | None = None,
) -> Forecast | None:
    """Forecast T* from checks at `tokens` (increasing), with `base` the loss per check and held-out batch
    (``[checks, batches]``) and `perturbed` the loss under each noise draw (``[checks, batches, draws]``),
    or any sensitivity measured per batch and draw as a loss (e.g. the pre-training loss after a short
    fine-tune, with draws = 1). Δ = mean perturbed − mean base. Only the checks from `regime_start` on are
    fitted, and with `window_doublings` only those within that many doublings of tokens of the newest (the
    laws need only hold locally). None below `MIN_CHECKS` fitted checks."""
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
    keep = np.arange(t.size) >= regime_start(t, b.mean(axis=1))
    if window_doublings is not None:
        keep &= t >= t[-1] / 2.0**window_doublings
    t, b, p = t[keep], b[keep], p[keep]
    loss = b.mean(axis=1)
    fit = fit_laws(t, loss, p.mean(axis=(1, 2)) - loss)
    if fit is None:
        return None
    laws = fit[0]
    now = float(t[-1])
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, n_batches, (n_boot, n_batches))
    di = rng.integers(0, n_draws, (n_boot, n_draws))
    loss_r = b[:, bi].mean(axis=2).T  # [n_boot, checks]
    delta_r = p[:, bi[:, :, None], di[:, None, :]].mean(axis=(2, 3)).T - loss_r
    # then the residuals: refit each replicate, resample its residuals over checks, refit
    n = t.size
    scale = math.sqrt(n / (n - 3))  # raw residuals under-state the noise by the 3 fitted parameters
    fit_l, res_l = _fit_many(t, loss_r, _loss_basis(t))
    fit_d, res_d = _fit_many(t, delta_r, _delta_basis(t))
    rows = np.arange(n_boot)[:, None]
    loss_s = fit_l + res_l[rows, rng.integers(0, n, (n_boot, n))] * scale
    delta_s = fit_d + res_d[rows, rng.integers(0, n, (n_boot, n))] * scale
    reps, rises = _t_star_many(t, loss_s, delta_s)
    low, high = (float(v) for v in np.quantile(reps, [0.05, 0.95], method="inverted_cdf"))
    return Forecast(now, laws.t_star(now), low, high, reps, laws, rises)


def _loss_basis(t: np.ndarray) -> np.ndarray:
    return (t / t[0])[None, :] ** -ALPHAS[:, None]


def _delta_basis(t: np.ndarray) -> np.ndarray:
    u = t / t[0]
    return np.stack([_basis(u, k) for k in KAPPAS])


def _ols_many(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For replicates ``y`` [R, checks] and a basis grid ``x`` [G, checks]: each replicate's best grid index
    and its slope and intercept there (least squares y ≈ c + a·x_g)."""
    xc = x - x.mean(axis=1, keepdims=True)
    sxx = np.einsum("ij,ij->i", xc, xc)
    ok = sxx > 1e-300
    yc = y - y.mean(axis=1, keepdims=True)
    a = (yc @ xc.T) / np.where(ok, sxx, 1.0)  # [R, G]
    sse = np.where(ok, np.einsum("ij,ij->i", yc, yc)[:, None] - a**2 * sxx, np.inf)
    g = np.argmin(sse, axis=1)
    rows = np.arange(y.shape[0])
    a_best = a[rows, g]
    c_best = y.mean(axis=1) - a_best * x.mean(axis=1)[g]
    return g, a_best, c_best


def _fit_many(t: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fitted values and residuals ([R, checks]) of each replicate's best fit on the basis grid `x`."""
    g, a, c = _ols_many(x, y)
    fitted = c[:, None] + a[:, None] * x[g]
    return fitted, y - fitted


def _t_star_many(t: np.ndarray, loss: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`Laws.t_star` and `Laws.rise_after` of the fits to every replicate (rows of `loss` and `delta`),
    vectorised."""
    gl, a, e = _ols_many(_loss_basis(t), loss)
    gd, c, f = _ols_many(_delta_basis(t), delta)
    alpha, kappa = ALPHAS[gl], KAPPAS[gd]
    u_now = t[-1] / t[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_u = (np.log(alpha * a) - np.log(c)) / (alpha + kappa)
        crossing = np.where(log_u < 600.0, t[0] * np.exp(np.minimum(log_u, 600.0)), np.inf)
        loss_ahead = alpha * a * u_now**-alpha > c * u_now**kappa
    out = np.where(alpha + kappa > 0, crossing, np.where(loss_ahead, np.inf, 0.0))
    out = np.where(a <= 0, 0.0, out)
    out = np.where(c <= 0, np.inf, out)

    def p(u: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            basis = np.where(kappa == 0, np.log(u), u**kappa / np.where(kappa == 0, 1.0, kappa))
            return e + a * u**-alpha + f + c * basis

    u_min = np.where(out > 0, out, t[-1]) / t[0]
    with np.errstate(invalid="ignore"):
        rise = np.where(np.isfinite(out), p(2 * u_min) / p(u_min) - 1, 0.0)
    # a T* already behind the newest check is a claim about checks in hand: the replicate's own perturbed
    # loss must have risen since then (laws fitted to a curve they do not describe — e.g. one that decays
    # to zero — otherwise "find" minima in a flat stretch)
    pert = loss + delta
    since = np.where(t[None, :] >= np.minimum(out, t[-1])[:, None], pert, np.inf).min(axis=1)
    seen = pert[:, -1] / since - 1
    rise = np.where(out < t[-1], seen, rise)
    return out, np.nan_to_num(rise, nan=0.0)


WARN_LEVEL = 0.9
"""The warning fires when P(T* ≤ now · 2^horizon) reaches this level."""


@dataclass(frozen=True)
class Prospective:
    """The forecaster replayed check by check, as it would have run live.

    Attributes:
        tokens: [C] check tokens.
        t_star, low, high: [C] the forecast and its interval at each check (NaN before `MIN_CHECKS`).
        p_within: [C] P(T* ≤ tokens · 2^horizon) at each check (NaN before `MIN_CHECKS`).
        warned_at: tokens of the first check with p_within ≥ `WARN_LEVEL`, or None.
    """

    tokens: np.ndarray
    t_star: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_within: np.ndarray
    warned_at: float | None

    def index_of(self, tokens: float) -> int:
        return int(np.flatnonzero(self.tokens == tokens)[0])

    def lead(self, true_t_star: float) -> float | None:
        """Doublings of tokens from the warning to the true T* (> 0: early); None if it never warned."""
        return None if self.warned_at is None else math.log2(true_t_star / self.warned_at)

    def error(self, true_t_star: float) -> float | None:
        """log2(forecast / true T*) at the warning, doublings; None if it never warned. A forecast of 0
        ("already past": the laws do not cross, the sensitivity out-runs the loss now) is read as T* at
        the warning's check, the latest T* it allows."""
        if self.warned_at is None:
            return None
        f = self.t_star[self.index_of(self.warned_at)]
        if not math.isfinite(f):
            return math.inf
        return math.log2((f if f > 0 else self.warned_at) / true_t_star)

    def coverage(self, true_t_star: float) -> float | None:
        """Share of the checks before the true T* (with a forecast) whose interval covers it."""
        ok = np.isfinite(self.p_within) & (self.tokens < true_t_star)
        if not ok.any():
            return None
        return float(np.mean((self.low[ok] <= true_t_star) & (true_t_star <= self.high[ok])))


def prospective(
    tokens,
    base: np.ndarray,
    perturbed: np.ndarray,
    *,
    horizon: float = 1.0,
    min_rise: float = 0.0,
    n_boot: int = 200,
    seed: int = 0,
    window_doublings: float | None = None,
) -> Prospective:
    """Replay `forecast` at every check on the checks up to it (no look-ahead), with the warning rule
    P(T* ≤ now · 2^horizon, rise after it ≥ `min_rise`) ≥ `WARN_LEVEL`. Shapes as in `forecast`."""
    t = np.asarray(tokens, dtype=float)
    n = t.size
    out = {k: np.full(n, np.nan) for k in ("t_star", "low", "high", "p_within")}
    warned_at = None
    for k in range(n):
        f = forecast(
            t[: k + 1],
            np.asarray(base)[: k + 1],
            np.asarray(perturbed)[: k + 1],
            n_boot=n_boot,
            seed=seed + k,
            window_doublings=window_doublings,
        )
        if f is None:
            continue
        out["t_star"][k], out["low"][k], out["high"][k] = f.t_star, f.low, f.high
        out["p_within"][k] = f.prob_within(horizon, min_rise)
        if warned_at is None and out["p_within"][k] >= WARN_LEVEL:
            warned_at = float(t[k])
    return Prospective(t, out["t_star"], out["low"], out["high"], out["p_within"], warned_at)
