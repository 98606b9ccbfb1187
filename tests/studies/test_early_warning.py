"""The forecaster replayed on monitor series and scored against a known T*."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from overtrain.analysis.forecast import Laws
from overtrain.studies.overtraining.early_warning import forecast_leads


def test_leads_errors_and_coverage_against_a_known_t_star():
    """Exact laws with T* at 1.24M tokens, checks 4 per doubling from 1e5: the replay warns before T*
    (lead > 0), its forecast at the warning is within half a doubling, and a target whose T* is before
    the fifth check gets no coverage (no forecast before it) but still a (negative) lead."""
    laws = Laws(E=3.0, A=1.0, alpha=0.3, F=0.0, C=0.04, kappa=0.5, t0=1e5)
    t = 1e5 * 2 ** (np.arange(20) / 4)
    noise = np.random.default_rng(0).normal(0, 0.001, t.size)
    series = {"run-a": (t, laws.loss(t) + noise, laws.delta(t))}
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
