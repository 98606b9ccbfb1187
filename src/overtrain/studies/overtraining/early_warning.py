"""The T* forecaster (`overtrain.analysis.forecast`) replayed on each pre-training run's monitor checks and
scored against the T* the study measured.

The monitor logs, at log-spaced checks of the main line, the base loss L and the sensitivity Δ
(``monitor/loss``, ``monitor/delta``, nats/token), and, when it fine-tunes at each check, the forgetting
Δ_ft (``monitor/ft_delta``) — the curve the fine-tuning decision is about, which the replay then watches. `forecast_leads` replays the forecaster check by check on
those series — the forecast at a check uses only the checks up to it, so the replay is what a live run
would have seen — and for every (seed, target T*) reports:

- ``warned_tokens``: the first check with P(T* ≤ now · 2^horizon, and a doubling past T* raising L + Δ by
  at least ``min_rise``) ≥ 0.9;
- ``lead_doublings``: log2(T* / warned_tokens), > 0 when the warning came before T*;
- ``error_doublings``: log2(forecast / T*) at the warning;
- ``coverage``: the share of checks before T* whose (5%, 95%) interval covers T*.

The bootstrap here resamples the fits' residuals only: the monitor logs the mean over its noise draws,
not each draw.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from overtrain.analysis.forecast import prospective
from overtrain.runs.query import Reader


class Series(NamedTuple):
    """One run's monitor checks: tokens, L and the watched sensitivity (nats/token), and its name."""

    tokens: np.ndarray
    loss: np.ndarray
    delta: np.ndarray
    signal: str


def monitor_series(reader: Reader, pretrain_ids) -> dict[str, Series]:
    """``{run_id: Series}`` of every pre-training run's monitor checks, in token order; the sensitivity is
    Δ_ft where every check logged it, else the noise Δ."""
    rows = reader.rows(
        "select run_id, tokens_seen, name, value from metrics where list_contains(?, run_id) "
        "and name in ('monitor/loss', 'monitor/delta', 'monitor/ft_delta') order by tokens_seen",
        [list(pretrain_ids)],
    )
    by_run: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], {}).setdefault(int(r["tokens_seen"]), {})[r["name"]] = r["value"]
    out = {}
    for run_id, checks in by_run.items():
        t = sorted(k for k, v in checks.items() if {"monitor/loss", "monitor/delta"} <= set(v))
        ft = all("monitor/ft_delta" in checks[k] for k in t)
        key = "monitor/ft_delta" if ft else "monitor/delta"
        out[run_id] = Series(
            np.array(t, dtype=float),
            np.array([checks[k]["monitor/loss"] for k in t]),
            np.array([checks[k][key] for k in t]),
            "forgetting of the monitor's fine-tune" if ft else "noise sensitivity",
        )
    return out


def forecast_leads(
    series: dict[str, Series],
    seed_of_parent: dict[str, int],
    targets: dict[str, Any],
    min_rise: float,
    horizon: float,
) -> list[dict[str, Any]]:
    """One row per (seed, target) (module docstring); targets map a name to its `Inflection` (or None)."""
    out = []
    for run_id, (t, loss, delta, signal) in series.items():
        replay = prospective(
            t, loss[:, None], (loss + delta)[:, None, None], horizon=horizon, min_rise=min_rise
        )
        for target, inf in targets.items():
            if inf is None:
                continue
            t_star = float(inf.t_star)
            at = replay.warned_at
            forecast_at = float(replay.t_star[replay.index_of(at)]) if at is not None else None
            out.append(
                {
                    "seed": seed_of_parent.get(run_id),
                    "run_id_pretrain": run_id,
                    "target": target,
                    "signal": signal,
                    "t_star": t_star,
                    "t_star_is_u": inf.is_u(min_rise),
                    "warned_tokens": at,
                    "forecast_at_warning": forecast_at
                    if forecast_at is None or math.isfinite(forecast_at)
                    else None,
                    "lead_doublings": replay.lead(t_star),
                    "error_doublings": _finite(replay.error(t_star)),
                    "coverage": replay.coverage(t_star),
                    "checks_before_t_star": int(np.sum(t < t_star)),
                }
            )
    return out


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def theory_leads(result, gamma: float, horizon: float, min_rise: float) -> list[dict[str, Any]]:
    """The forecaster replayed on the linear theory model (`LinearTheoryResult`, with its draws), where the
    whole trajectory is known: per seed, the target is the perturbed loss at `gamma` (T* its argmin over
    the checkpoints, a U when it rises `min_rise` after it), the checks are the checkpoints (steps stand in
    for tokens) and the bootstrap resamples the noise draws too. Rows as in `forecast_leads`, plus ``rise``."""
    g = result.gamma_index(gamma)
    steps = result.steps.astype(float)
    out = []
    for s, seed in enumerate(result.seeds):
        base, draws = result.base_loss[s], result.draw_losses[s, :, g, :]
        target = draws.mean(axis=1)
        j = int(np.argmin(target))
        rise = float(target[-1] / target[j] - 1)
        replay = prospective(
            steps, base[:, None], draws[:, None, :], horizon=horizon, min_rise=min_rise, seed=int(seed)
        )
        at = replay.warned_at
        out.append(
            {
                "seed": int(seed),
                "target": f"perturbed loss, γ={gamma:g}",
                "t_star": float(steps[j]),
                "t_star_is_u": 0 < j < steps.size - 1 and rise >= min_rise,
                "rise": rise,
                "warned_tokens": at,
                "lead_doublings": replay.lead(float(steps[j])),
                "error_doublings": _finite(replay.error(float(steps[j]))),
                "coverage": replay.coverage(float(steps[j])),
                "checks_before_t_star": int(np.sum(steps < steps[j])),
            }
        )
    return out
