"""The forecaster replayed on monitor series and scored against a known T*."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from overtrain.analysis.forecast import Laws
from overtrain.studies.overtraining.early_warning import Series, forecast_leads


def test_leads_errors_and_coverage_against_a_known_t_star():
    """Exact laws with T* at 1.24M tokens, checks 4 per doubling from 1e5: the replay warns before T*
    (lead > 0), its forecast at the warning is within half a doubling, and a target whose T* is before
    the fifth check gets no coverage (no forecast before it) but still a (negative) lead."""
    laws = Laws(E=3.0, A=1.0, alpha=0.3, F=0.0, C=0.04, kappa=0.5, t0=1e5)
    t = 1e5 * 2 ** (np.arange(20) / 4)
    noise = np.random.default_rng(0).normal(0, 0.001, t.size)
    series = {"run-a": Series(t, laws.loss(t) + noise, laws.delta(t), "noise sensitivity")}
    truth = laws.t_star(t[0])
    early = SimpleNamespace(t_star=t[2], is_u=lambda min_rise: True)
    rows = forecast_leads(
        series,
        {"run-a": 7},
        {"true": SimpleNamespace(t_star=truth, is_u=lambda m: True), "early": early, "none": None},
        0.005,
        1.0,
    )
    by = {r["target"]: r for r in rows}
    assert set(by) == {"true", "early"} and by["true"]["seed"] == 7
    assert by["true"]["lead_doublings"] > 0 and abs(by["true"]["error_doublings"]) < 0.5
    assert by["true"]["coverage"] is not None and by["true"]["checks_before_t_star"] == int(np.sum(t < truth))
    assert by["early"]["coverage"] is None and by["early"]["lead_doublings"] < 0


def test_theory_model_forecast_is_close_and_the_flat_control_raises_no_alarm():
    """The linear theory model, 3 seeds, 4 checkpoints per doubling to 10⁴ steps: at γ = 0.03 (learning a
    direction i pays only while s_i > 2γ²d, so the perturbed loss turns up near step 1,600) the forecast at
    the warning is within a doubling of T*; at γ = 0.01 every direction pays (no U) and it never warns."""
    from overtrain.studies.overtraining.early_warning import theory_leads
    from overtrain.studies.overtraining.theory import LinearTheoryConfig
    from overtrain.studies.overtraining.theory_run import run_linear_theory

    cfg = LinearTheoryConfig(
        dim=40, max_steps=10_000, n_checkpoints=27, seeds=[1, 2, 3], draws=4, gammas=[0.01, 0.03], ft_steps=1
    )
    result = run_linear_theory(cfg)
    u = theory_leads(result, 0.03, 1.0, 0.005)
    assert all(r["t_star_is_u"] for r in u)
    assert all(r["warned_tokens"] is not None and abs(r["error_doublings"]) < 1.0 for r in u), u
    flat = theory_leads(result, 0.01, 1.0, 0.005)
    assert not any(r["t_star_is_u"] for r in flat)
    assert all(r["warned_tokens"] is None for r in flat), flat
