"""The random-features double-descent study, end to end on a reduced grid, and its calibrated decision rules
(each passes a planted effect and fails a planted null on fixed draws)."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.analysis.bounds import paired_rule
from overtrain.analysis.calibration import Calibration, no_peak, planted_peak
from overtrain.cli.main import main
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.runs.store import Store
from overtrain.studies import base as study_base
from overtrain.studies.random_features.analysis import claims as rf_claims
from overtrain.studies.random_features.calibrate import (
    joint,
    log_peak,
    log_peak_calibration,
    paired_calibration,
    trend_calibration,
    trend_rule,
)
from overtrain.studies.random_features.config import RandomFeaturesConfig
from overtrain.studies.random_features.engine import compute

SMALL = {
    "datasets": [
        {"name": "teacher", "n_train": 60, "n_test": 300},
        {"name": "digits", "n_train": 120, "n_test": 300, "label_noise": 0.0},
        {"name": "digits", "n_train": 120, "n_test": 300, "label_noise": 0.4},
    ],
    "features": ["relu"],
    "width_ratios": [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.3, 2.0, 4.0, 10.0],
    "ridges": [1e-2, 1e-1, 1.0],
    "steps": [1e2],
    "seeds": [0, 1, 2, 3],
    "samplewise": {"width": 60, "n_ratios": [0.5, 0.9, 1.0, 1.1, 2.0]},
}


@pytest.fixture(scope="module")
def reduced() -> tuple[RandomFeaturesConfig, list[dict]]:
    cfg = RandomFeaturesConfig.model_validate(SMALL)
    rows, info = compute(cfg)
    assert info["curves"] == 3 * 4  # datasets x seeds (one feature map)
    return cfg, rows


def test_every_claim_of_the_reduced_study_holds_on_fixed_seeds(reduced):
    cfg, rows = reduced
    claims = {c.claim: c.row() for c in rf_claims(cfg, rows)}
    assert len(claims) == 8
    failed = {k: (v["value"], v["detail"]) for k, v in claims.items() if v["verdict"] != "PASS"}
    assert not failed
    findings = [v for v in claims.values() if v["type"] == "finding"]
    assert len(findings) == 5
    # every finding carries its calibration: a measured fpr within the 5% a PASS needs, and a power
    assert all(v["fpr"] is not None and v["fpr"] <= 0.05 and v["power"] is not None for v in findings)
    assert all("simulations of 4 seeds" in v["detail"] for v in findings)
    curve = [
        r
        for r in rows
        if r["record"] == "curve"
        and r["dataset"].startswith("teacher")
        and r["solver"] == "min_norm"
        and r["seed"] == 0
    ]
    # widths round P = ratio·n; the threshold itself is always on the grid and interpolates exactly
    at_n = next(r for r in curve if r["width"] == 60)
    assert at_n["train_loss"] < 1e-12 and at_n["kappa"] > 10 * min(r["kappa"] for r in curve)


def test_findings_on_three_seeds_are_underpowered(reduced):
    """The same runs without seed 3: no finding can PASS or FAIL on three seeds; the checks still decide."""
    cfg, rows = reduced
    three = cfg.model_copy(update={"seeds": [0, 1, 2]})
    claims = rf_claims(three, [r for r in rows if r.get("seed") != 3])
    assert {c.verdict for c in claims if c.type == "finding"} == {"UNDERPOWERED"}
    assert {c.verdict for c in claims if c.type == "check"} == {"PASS"}


# --- the decision rules on planted nulls and effects -----------------------------------------------------

GRID = np.array([0.25, 0.5, 0.7, 0.9, 1.0, 1.1, 1.5, 2.0, 4.0, 10.0])
AT_N = 4


def _curves(mean: np.ndarray, sigma: float, seeds: int = 4, seed: int = 0) -> np.ndarray:
    """Seeds x grid positive curves: the mean times log-normal noise of log-SD `sigma` (fixed draws)."""
    rng = np.random.default_rng(seed)
    return mean * np.exp(rng.normal(0, sigma, size=(seeds, len(mean))))


def test_peak_rule_passes_a_planted_peak_and_fails_a_planted_null():
    null = no_peak(np.array([1.0, 0.8, 0.7, 0.75, 0.9, 0.85, 0.6, 0.5, 0.45, 0.4]))
    assert np.all(np.diff(null[4:]) <= 0)  # the bump at P = n removed: a monotone descent after P/n = 0.7
    peaked = planted_peak(null, 0.5, AT_N)
    for seed in range(3):
        assert log_peak(_curves(peaked, 0.05, seed=seed), GRID, 1.0, 0.1).passed
        assert not log_peak(_curves(null, 0.05, seed=seed), GRID, 1.0, 0.1).passed
    # a real peak in the wrong place is not a peak at P = n
    elsewhere = log_peak(_curves(planted_peak(null, 0.5, 7), 0.05), GRID, 1.0, 0.1)
    assert elsewhere.lower > 0 and not elsewhere.located and not elsewhere.passed
    # three seeds give no bound, so no pass
    assert log_peak(_curves(peaked, 0.05, seeds=3), GRID, 1.0, 0.1).lower is None


def test_peak_calibration_measures_a_small_fpr_and_the_power_of_a_large_peak():
    curves = _curves(planted_peak(no_peak(np.linspace(1.0, 0.5, len(GRID))), 3.0, AT_N), 0.1)
    cal = log_peak_calibration(curves, GRID, 1.0, 0.1, height=0.5)
    assert cal.fpr <= 0.05 and cal.power >= 0.8 and cal.n_groups == 4
    assert abs(cal.sigma - 0.1) < 0.03  # the log noise measured from the curves themselves
    small = log_peak_calibration(curves, GRID, 1.0, 0.1, height=0.02)
    assert small.power < cal.power  # a peak small against the noise is rarely seen


def test_paired_rule_passes_a_planted_gap_and_fails_a_planted_null():
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert paired_rule()(rng.normal(np.log(1.5), 0.1, size=(4, 1)))
        assert not paired_rule()(rng.normal(0.0, 0.1, size=(4, 1)) - 0.05)
    assert not paired_rule()(np.full((3, 1), 1.0))  # three seeds: no bound
    cal = paired_calibration(rng.normal(0, 0.05, size=6), gap=0.2)
    assert cal.fpr <= 0.05 and cal.power >= 0.9 and cal.n_groups == 6


def test_trend_rule_passes_a_planted_rise_and_fails_a_flat_null():
    levels = [0.0, 0.1, 0.2]
    rng = np.random.default_rng(0)
    rule = trend_rule(levels)
    rise = np.log([0.80, 0.88, 0.96])
    for _ in range(3):
        assert rule(rise + rng.normal(0, 0.01, size=(4, 3)))
        assert not rule(np.log(0.88) + rng.normal(0, 0.01, size=(4, 3)))
    cal = trend_calibration(levels, rise + rng.normal(0, 0.01, size=(4, 3)), rise=0.2)
    assert cal.fpr <= 0.05 and cal.power >= 0.9


def test_joint_calibration_takes_the_worst_fpr_and_the_product_of_powers():
    a, b = Calibration(0.01, 0.9, 200, 0.1, 4), Calibration(0.03, 0.5, 200, 0.3, 5)
    both = joint([a, b])
    assert (both.fpr, both.power, both.sigma, both.n_groups) == (0.03, pytest.approx(0.45), 0.3, 4)
    assert joint([a, None]) is None and joint([]) is None


def test_study_runs_from_the_cli_and_reports(tmp_path, home, capsys, monkeypatch):
    import yaml

    cfg = tmp_path / "rf.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "seeds": [0], "datasets": SMALL["datasets"][:2]}))
    with pytest.raises(SystemExit) as exc:
        main(["random-features", "--config", str(cfg), "--report", str(tmp_path / "rep")])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "peaks at the interpolation threshold" in out
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Random-features double descent" in html and (tmp_path / "rep" / "rf_samplewise.png").is_file()
    # the study's run is content-addressed: a rerun is skipped
    study = STUDIES.get("random_features")
    result, run_id = study.run(study.load_config(cfg), Store(), progress=False)
    assert result.ok and result.skipped and not result.done
    assert Store().status("random_features_analysis", run_id) == "success"
    assert RUN_KINDS.get("random_features").config_cls is RandomFeaturesConfig
    # an edited claim is a new analysis run over the stored curves: the computation is not redone
    compute_id = study.compute_kind().run_id(study.load_config(cfg))
    key = (*study.analysis_modules, "overtrain.analysis")
    monkeypatch.setitem(study_base._DIGESTS, key, "edited")
    again, new_id = study.run(study.load_config(cfg), Store(), progress=False)
    assert new_id != run_id and again.done == [new_id] and again.skipped == [compute_id]


def test_bad_cli_input_is_a_one_line_error(home, capsys):
    for args in (["--set", "seeds=[]"], ["--set", "widths=3"], ["--preset", "huge"]):
        with pytest.raises(SystemExit) as exc:
            main(["random-features", *args])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        RandomFeaturesConfig.model_validate({**SMALL, "seeds": []})
    with pytest.raises(ValueError):
        RandomFeaturesConfig.model_validate({**SMALL, "widths": [1, 2]})
    with pytest.raises(ValueError):
        RandomFeaturesConfig.model_validate({**SMALL, "datasets": [{"name": "mnist"}]})
