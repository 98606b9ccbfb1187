"""The T* forecaster (`overtrain.analysis.forecast`) replayed on each pre-training run's monitor checks and
scored against the T* the study measured.

The monitor logs, at log-spaced checks of the main line, the base loss L and the sensitivity Δ
(``monitor/loss``, ``monitor/delta``, nats/token). `forecast_leads` replays the forecaster check by check on
those series — the forecast at a check uses only the checks up to it, so the replay is what a live run
would have seen — and for every (seed, target T*) reports:

- ``warned_tokens``: the first check with P(T* ≤ now · 2^horizon) ≥ 0.9;
- ``lead_doublings``: log2(T* / warned_tokens), > 0 when the warning came before T*;
- ``error_doublings``: log2(forecast / T*) at the warning;
- ``coverage``: the share of checks before T* whose (5%, 95%) interval covers T*.

The bootstrap here resamples the fits' residuals only: the monitor logs the mean over its noise draws,
not each draw.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from overtrain.analysis.forecast import prospective
from overtrain.runs.query import Reader


def monitor_series(reader: Reader, pretrain_ids) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{run_id: (tokens, L, Δ)}`` of every pre-training run's monitor checks, in token order."""
    rows = reader.rows(
        "select run_id, tokens_seen, name, value from metrics where list_contains(?, run_id) "
        "and name in ('monitor/loss', 'monitor/delta') order by tokens_seen",
        [list(pretrain_ids)],
    )
    by_run: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], {}).setdefault(int(r["tokens_seen"]), {})[r["name"]] = r["value"]
    out = {}
    for run_id, checks in by_run.items():
        t = sorted(k for k, v in checks.items() if len(v) == 2)
        out[run_id] = (
            np.array(t, dtype=float),
            np.array([checks[k]["monitor/loss"] for k in t]),
            np.array([checks[k]["monitor/delta"] for k in t]),
        )
    return out


def forecast_leads(
    series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    seed_of_parent: dict[str, int],
    targets: dict[str, Any],
    min_rise: float,
    horizon: float,
) -> list[dict[str, Any]]:
    """One row per (seed, target) (module docstring); targets map a name to its `Inflection` (or None)."""
    out = []
    for run_id, (t, loss, delta) in series.items():
        replay = prospective(t, loss[:, None], (loss + delta)[:, None, None], horizon=horizon)
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
