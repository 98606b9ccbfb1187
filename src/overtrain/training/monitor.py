"""Early-warning monitor: is the model, while it pre-trains, already past the budget where more
pre-training makes it worse?

At check steps s_1 < s_2 < ... of the main line (``per_doubling`` per doubling of the step count, from
``start_step``), on fixed held-out batches and with the same noise directions at every check:

    L_k = L(θ_k)                              base loss, nats/token
    Δ_k = mean_j L(θ_k + ε_j) − L_k            Gaussian-perturbation sensitivity (``law``, ``gamma``)
    P_k = L_k + Δ_k                            perturbed loss, the quantity that is U-shaped in tokens

Over the last ``window`` checks it fits P against x = log2(tokens) by least squares: slope b (nats per
doubling of tokens) and its standard error se(b); by linearity b = b_L + b_Δ, the slopes of the loss and
of the sensitivity, so b > 0 says *the sensitivity now grows faster than the loss falls*. The monitor warns
when b − q·se(b) > ``min_slope`` (one-sided, q the Student-t quantile of ``confidence`` with window − 2
degrees of freedom) at ``patience`` consecutive checks —
the perturbed loss has passed its minimum — and names the predicted minimum T̂: the vertex of a
least-squares quadratic in x through every check so far (when convex and inside the checked range; else
the first check of the window).

From the fifth check on, every check also forecasts T* from all checks so far
(`overtrain.analysis.forecast`: −dL/dlog T and dΔ/dlog T as power laws, T* where they meet, a bootstrap
interval) and warns — before the minimum — once P(a material T* within ``forecast_horizon`` doublings)
≥ 0.9; the slope rule above remains the "already past T*" backstop (docs/early_warning.md).

What a check measures is configurable: with ``average`` it measures a power EMA of the weights (a
stand-in for the cool-down the study's budget checkpoints get), and with ``finetune`` it also fine-tunes a
copy for a few steps and the rules read that forgetting, Δ_ft = L(after) − L, in place of Δ — the curve
the fine-tuning decision is about.

Costs ``(1 + draws) × eval_batches`` small forward passes per check, ``finetune.steps × finetune.draws``
small training steps when fine-tuning, and two small least-squares fits per bootstrap replicate.

Caveat, measured rather than assumed: under WSD the main line has a constant LR, whereas the study's T*
is measured on cooled-down budget checkpoints; the monitor's lead time is evaluated against that T* in
the overtraining study's analysis (`overtrain.studies.overtraining.analysis`).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from overtrain.analysis.forecast import MIN_CHECKS, WARN_LEVEL, forecast
from overtrain.config import BaseConfig, InIdWhenSet, NotInId, Registered
from overtrain.core.evaluate import evaluate_loss
from overtrain.core.perturb import init_scale, relative
from overtrain.probes.draw_batching import Perturbation, perturbed_losses
from overtrain.registry import DATASETS
from overtrain.training.loop import build_optimizer, train_segment


class MonitorFinetune(BaseConfig):
    """A short full fine-tune from the weights at each check (``pretrain.monitor.finetune``): the
    forgetting the user will pay, measured while pre-training runs. Δ_ft = L(θ after the fine-tune) − L(θ)
    on the monitor's held-out pre-training batches, nats/token; the same task batches at every check."""

    data: Registered(DATASETS, "hmm")
    """The fine-tuning task (its vocabulary must fit the model's)."""

    lr: float = Field(gt=0)
    """Constant AdamW learning rate (no weight decay): the rate the user will fine-tune at."""

    steps: int = Field(30, ge=1)
    """Optimizer steps (the issue's 20–50: long enough to forget, short enough to run at every check)."""

    batch_size: int = Field(64, ge=1)
    """Sequences per step."""

    draws: int | None = InIdWhenSet(ge=1)
    """Fine-tunes per check, each on its own task batches (the same ones at every check), averaged (unset:
    one). One 30-step fine-tune at LR 3e-2 on the demo's model scatters by 0.04–0.05 nats over batch orders
    (measured on two checkpoints, 5 orders each); the scatter falls as 1/√draws."""


class MonitorConfig(BaseConfig):
    """The early-warning monitor of a pre-training run (``pretrain.monitor``)."""

    start_step: int = Field(32, ge=1)
    """First check, in optimizer steps of the main line."""

    per_doubling: int = Field(4, ge=1)
    """Checks per doubling of the step count (log-spaced: the U is in log tokens)."""

    law: Literal["init_scale", "relative"] = "init_scale"
    """Noise law (see `overtrain.core.perturb`): ``init_scale`` is the paper's canonical one."""

    gamma: float = Field(4.0, gt=0)
    """Noise scale γ."""

    draws: int = Field(2, ge=1)
    """Noise draws per check (the same directions at every check: common random numbers)."""

    eval_batches: int = Field(1, ge=1)
    """Held-out batches per check."""

    batch_size: int = Field(64, ge=1)
    """Sequences per held-out batch."""

    window: int = Field(6, ge=3)
    """Checks in the slope fit (the most recent ones)."""

    confidence: float = Field(0.95, gt=0.5, lt=1)
    """One-sided confidence that the slope exceeds ``min_slope``."""

    min_slope: float = Field(0.0, ge=0)
    """Smallest rise worth a warning, nats per doubling of tokens."""

    patience: int = Field(3, ge=1)
    """Consecutive checks that must agree before the monitor warns. With the defaults, on a flat curve of
    pure noise, 3% of 200 simulated runs of 28 checks raised a false alarm (tests/training/test_monitor.py)."""

    seed: int = Field(0, ge=0)
    """Noise stream."""

    average: float | None = InIdWhenSet(gt=0, lt=0.5)
    """Measure on a running average of the weights instead of the weights themselves: a power EMA
    (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models") whose
    weights' mean age is this fraction of the steps so far, β_t = (1 − 1/t)^(1/average − 1). The
    study's T* is measured on cooled-down checkpoints; averaging the constant-LR main line approximates
    the cool-down (a 10% linear cool-down averages with mean age ~3% of the steps). Unset: raw weights."""

    finetune: MonitorFinetune | None = InIdWhenSet()
    """A short fine-tune at every check (`MonitorFinetune`); when set, the forecaster and the detector watch
    its forgetting Δ_ft, the curve the fine-tuning decision is about, instead of the noise sensitivity."""

    forecast: bool = NotInId(True)
    """Forecast T* at every check from the fifth (False: the slope detector alone)."""

    forecast_horizon: float = NotInId(1.0, gt=0)
    """The live T* forecast (`overtrain.analysis.forecast`) warns when a material T* is within this many
    doublings of tokens with 90% probability. Display only (it changes no measured L or Δ): the
    overtraining study replays the forecaster on the logged checks with its own settings."""

    forecast_min_rise: float = NotInId(0.005, ge=0)
    """Relative rise of L + Δ over the doubling after T* below which a forecast minimum is not worth a
    warning."""

    def check_steps(self, last: int) -> list[int]:
        """Log-spaced check steps in ``[start_step, last]``, ``per_doubling`` per doubling."""
        out: list[int] = []
        k = 0
        while (step := round(self.start_step * 2 ** (k / self.per_doubling))) <= last:
            if not out or step > out[-1]:
                out.append(step)
            k += 1
        return out


@dataclass(frozen=True)
class Check:
    """One monitor check.

    Attributes:
        tokens: tokens seen at the check.
        loss: L, nats/token.
        delta: Δ, nats/token.
        slope: b, fitted slope of the perturbed loss, nats per doubling of tokens (NaN before `window`).
        slope_se: se(b).
        loss_slope: b_L, nats per doubling.
        delta_slope: b_Δ, nats per doubling.
        rising: b − q·se(b) > min_slope.
        warning: the monitor warns at this check (``patience`` rising checks in a row): past T* already.
        predicted_min: T̂, tokens (NaN before `window`).
        forecast: the T* forecast from every check so far, tokens (∞: none; NaN before 5 checks).
        forecast_low, forecast_high: its bootstrap (5%, 95%) interval, tokens.
        forecast_p: P(a material T* within ``forecast_horizon`` doublings).
        forecast_warning: the forecaster warns at this check (first time forecast_p ≥ 0.9).
        ft_delta: Δ_ft, nats/token, when the monitor fine-tunes (``finetune``); else NaN.
    """

    tokens: int
    loss: float
    delta: float
    slope: float
    slope_se: float
    loss_slope: float
    delta_slope: float
    rising: bool
    warning: bool
    predicted_min: float
    forecast: float = float("nan")
    forecast_low: float = float("nan")
    forecast_high: float = float("nan")
    forecast_p: float = float("nan")
    forecast_warning: bool = False
    ft_delta: float = float("nan")

    @property
    def watched(self) -> float:
        """The sensitivity the rules read: Δ_ft when measured, else Δ."""
        return self.delta if math.isnan(self.ft_delta) else self.ft_delta

    @property
    def perturbed(self) -> float:
        return self.loss + self.watched

    def record(self) -> dict[str, float]:
        """``monitor/*`` metrics for ``metrics.jsonl`` (the fitted ones once there are `window` checks)."""
        out = {
            "monitor/loss": self.loss,
            "monitor/delta": self.delta,
            "monitor/perturbed": self.perturbed,
            "monitor/slope": self.slope,
            "monitor/slope_se": self.slope_se,
            "monitor/loss_slope": self.loss_slope,
            "monitor/delta_slope": self.delta_slope,
            "monitor/rising": float(self.rising),
            "monitor/warning": float(self.warning),
            "monitor/predicted_min": self.predicted_min,
            "monitor/forecast_p": self.forecast_p,
            "monitor/forecast_warning": float(self.forecast_warning),
            "monitor/ft_delta": self.ft_delta,
        }
        # JSON has no ∞: a forecast without a minimum is simply not logged
        for key, v in (("forecast", self.forecast), ("forecast_low", self.forecast_low)):
            out[f"monitor/{key}"] = v if math.isfinite(v) else float("nan")
        out["monitor/forecast_high"] = (
            self.forecast_high if math.isfinite(self.forecast_high) else float("nan")
        )
        return {k: v for k, v in out.items() if not math.isnan(v)}


class Monitor:
    """The decision rule of the module docstring, fed one (tokens, L, Δ) at a time."""

    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.history: list[tuple[int, float, float]] = []
        self.run_length = 0
        self.fired_at: int | None = None
        self.forecast_warned_at: int | None = None

    def update(self, tokens: int, loss: float, delta: float, ft_delta: float | None = None) -> Check:
        """Feed one check: L, Δ and (when the monitor fine-tunes) Δ_ft, nats/token; the rules read Δ_ft
        when given."""
        watched = delta if ft_delta is None else ft_delta
        self.history.append((tokens, loss, watched))
        check = self._detect(tokens, loss, watched)
        check = replace(check, delta=delta, ft_delta=float("nan") if ft_delta is None else ft_delta)
        if not self.cfg.forecast or len(self.history) < MIN_CHECKS:
            return check
        t, lo, de = (np.array(v, dtype=float) for v in zip(*self.history))
        f = forecast(t, lo[:, None], (lo + de)[:, None, None], seed=self.cfg.seed)
        if f is None:  # the loss has not yet passed its fastest fall: no law to extrapolate
            return check
        p = f.prob_within(self.cfg.forecast_horizon, self.cfg.forecast_min_rise)
        warn = p >= WARN_LEVEL and self.forecast_warned_at is None
        if warn:
            self.forecast_warned_at = tokens
        return replace(
            check,
            forecast=f.t_star,
            forecast_low=f.low,
            forecast_high=f.high,
            forecast_p=p,
            forecast_warning=warn,
        )

    def _detect(self, tokens: int, loss: float, delta: float) -> Check:
        """The detector (module docstring) on the history, whose newest entry is this check."""
        w = self.cfg.window
        nan = float("nan")
        if len(self.history) < w:
            return Check(tokens, loss, delta, nan, nan, nan, nan, False, False, nan)
        t, lo, de = (np.array(v, dtype=float) for v in zip(*self.history[-w:]))
        x = np.log2(t)
        slope, se = _ols_slope(x, lo + de)
        loss_slope, _ = _ols_slope(x, lo)
        delta_slope, _ = _ols_slope(x, de)
        from scipy.stats import t as student_t

        q = float(student_t.ppf(self.cfg.confidence, w - 2))
        rising = bool(slope - q * se > self.cfg.min_slope)
        self.run_length = self.run_length + 1 if rising else 0
        warning = self.run_length >= self.cfg.patience and self.fired_at is None
        if warning:
            self.fired_at = tokens
        return Check(
            tokens,
            loss,
            delta,
            slope,
            se,
            loss_slope,
            delta_slope,
            rising,
            warning,
            self.predicted_min(window_start=float(t[0])),
        )

    def predicted_min(self, window_start: float) -> float:
        """T̂: the vertex of a quadratic in log2(tokens) through every check, if convex and in range."""
        t, lo, de = (np.array(v, dtype=float) for v in zip(*self.history))
        x = np.log2(t)
        if len(x) >= 3:
            a, b, _ = np.polyfit(x, lo + de, 2)
            if a > 0 and x[0] <= -b / (2 * a) <= x[-1]:
                return float(2 ** (-b / (2 * a)))
        return window_start


def _ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error (n − 2 degrees of freedom)."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx) if len(x) > 2 else float("nan")
    return slope, se


class MonitorProbe:
    """Computes L, Δ (and Δ_ft) of a model on the monitor's batches: one check's measurements."""

    def __init__(
        self,
        cfg: MonitorConfig,
        batches: Sequence[torch.Tensor],
        init_model: torch.nn.Module,
        seq_len: int,
        vocab_size: int,
    ) -> None:
        self.cfg = cfg
        self.batches = list(batches)
        # Only per-tensor stds of the initialisation are kept, not a copy of the weights.
        self.init_scales = (
            init_scale(init_model, 1.0, init_state=init_model) if cfg.law == "init_scale" else None
        )
        self.task: list[list[torch.Tensor]] = []  # per fine-tune draw, its batch per step
        if cfg.finetune is not None:
            source = cfg.finetune.data.build()
            if source.vocab_size > vocab_size:
                raise ValueError(
                    f"monitor.finetune.data: vocab_size {source.vocab_size} exceeds the model's {vocab_size}"
                )
            fc = cfg.finetune
            self.task = [
                [source.batch("train", d * fc.steps + s, fc.batch_size, seq_len) for s in range(fc.steps)]
                for d in range(fc.draws or 1)
            ]

    def measure(
        self, model: torch.nn.Module, autocast_dtype: torch.dtype | None = None
    ) -> tuple[float, float, float | None]:
        """``(L, Δ, Δ_ft)`` in nats/token (Δ_ft None without ``finetune``)."""
        scales = self.init_scales if self.init_scales is not None else relative(model, 1.0)
        stds = {name: self.cfg.gamma * s for name, s in scales.items()}
        work = [Perturbation(k, stds) for k in range(self.cfg.draws)]
        res = perturbed_losses(model, self.batches, work, seed=self.cfg.seed, autocast_dtype=autocast_dtype)
        ft = None
        if self.task:
            ft = (
                float(np.mean([self.forgetting(model, b, autocast_dtype) for b in self.task])) - res.base_loss
            )
        return res.base_loss, float(np.mean(res.losses)) - res.base_loss, ft

    def forgetting(
        self, model: torch.nn.Module, task: list[torch.Tensor], autocast_dtype: torch.dtype | None
    ) -> float:
        """The monitor batches' loss after full fine-tuning of a copy of `model` on the `task` batches."""
        fc = self.cfg.finetune
        device = next(model.parameters()).device
        tuned = copy.deepcopy(model)
        for p in tuned.parameters():  # the weight average is held frozen
            p.requires_grad_(True)
        optimizer = build_optimizer(tuned, fc.lr, 0.0, (0.9, 0.95), 1e-8)
        train_segment(
            tuned,
            optimizer,
            task.__getitem__,
            lambda _: fc.lr,
            0,
            len(task),
            autocast_dtype=autocast_dtype,
            device=device,
        )
        return evaluate_loss(tuned, self.batches, autocast_dtype=autocast_dtype, device=device)


class WeightAverage:
    """The power EMA of `MonitorConfig.average`, held as a module: after step s (0-based), with t = s + 1,
    θ̄ ← β_t·θ̄ + (1 − β_t)·θ, β_t = (1 − 1/t)^(1/average − 1); θ̄ = θ after the first step."""

    def __init__(self, model: torch.nn.Module, average: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.exponent = 1.0 / average - 1.0
        self.source = [p for p in model.parameters()]
        self.target = [p for p in self.module.parameters()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        t = step + 1
        beta = (1.0 - 1.0 / t) ** self.exponent
        torch._foreach_lerp_(self.target, self.source, 1.0 - beta)


def announce_forecast(check: Check, horizon: float) -> None:
    """The live forecast's warning (stderr, one line)."""
    print(
        f"[overtrain monitor] at {check.tokens:,} tokens the forecast T* is {check.forecast:,.0f} tokens "
        f"(90% interval {check.forecast_low:,.0f}–{check.forecast_high:,.0f}); P(T* within "
        f"{horizon:g} doubling of tokens) = {check.forecast_p:.2f} — pre-training past it is likely to make "
        "fine-tuning worse",
        file=sys.stderr,
    )


def announce(check: Check) -> None:
    """The console warning (stderr, one line)."""
    print(
        f"[overtrain monitor] at {check.tokens:,} tokens the perturbed loss is rising "
        f"({check.slope:+.3f} ± {check.slope_se:.3f} nats per doubling of tokens: sensitivity grows "
        f"{check.delta_slope:+.3f}, loss falls {check.loss_slope:+.3f}); predicted minimum near "
        f"{check.predicted_min:,.0f} tokens — more pre-training is likely to make fine-tuning worse",
        file=sys.stderr,
    )
