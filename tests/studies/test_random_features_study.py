"""The random-features double-descent study, end to end on a reduced grid."""

from __future__ import annotations

import pytest

from overtrain.cli.main import main
from overtrain.registry import RUN_KINDS, STUDIES
from overtrain.runs.store import Store
from overtrain.studies import base as study_base
from overtrain.studies.random_features.analysis import claims as rf_claims
from overtrain.studies.random_features.config import RandomFeaturesConfig
from overtrain.studies.random_features.engine import compute

SMALL = {
    "datasets": [
        {"name": "teacher", "n_train": 60, "n_test": 300},
        {"name": "digits", "n_train": 120, "n_test": 300, "label_noise": 0.0},
        {"name": "digits", "n_train": 120, "n_test": 300, "label_noise": 0.2},
    ],
    "features": ["relu"],
    "width_ratios": [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.3, 2.0, 4.0, 10.0],
    "ridges": [1e-2, 1e-1, 1.0],
    "steps": [1e2],
    "seeds": [0, 1, 2],
    "samplewise": {"width": 60, "n_ratios": [0.5, 0.9, 1.0, 1.1, 2.0]},
}


def test_every_claim_of_the_reduced_study_holds_on_fixed_seeds():
    cfg = RandomFeaturesConfig.model_validate(SMALL)
    rows, info = compute(cfg)
    claims = {c.claim: c.row() for c in rf_claims(cfg, rows)}
    assert len(claims) == 8 and info["curves"] == 9
    failed = {k: (v["value"], v["detail"]) for k, v in claims.items() if v["verdict"] != "PASS"}
    assert not failed
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
