"""The head-tuning and sample-wise linear studies through the study interface (one run each)."""

from __future__ import annotations

import pytest

from overtrain.registry import STUDIES
from overtrain.report.build import build_report
from overtrain.runs.store import Store


@pytest.mark.parametrize("name, overrides, passing", [
    ("head_tuning", ["trials=6", "repr_dim=300", "snrs=[0.25,1.0]"],
     {"head-tuning risk peaks at p = n (double descent in model complexity)"}),
    ("samplewise_linear", ["trials=12", "d=40"],
     {"more data hurts: the test MSE at n = d exceeds that at n = d/2", "sample-wise test MSE peaks at n = d"}),
])
def test_study_runs_records_claims_and_reports(home, tmp_path, name, overrides, passing):
    study = STUDIES.get(name)
    cfg = study.load_config(None, None, overrides)
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    rows = store.run_dir(name, run_id) / "evals.jsonl"
    verdicts = {}
    import json

    for line in rows.read_text().splitlines():
        r = json.loads(line)
        if r.get("record") == "claim":
            verdicts[r["claim"]] = r["verdict"]
    assert passing <= {c for c, v in verdicts.items() if v == "PASS"}, verdicts
    manifest = store.manifest(name, run_id)
    assert manifest["info"]["claims_total"] == len(verdicts)
    html = build_report(tmp_path / "rep", name, store).read_text()
    assert "claims pass" in html
    again, _ = study.run(cfg, store, progress=False)
    assert len(again.skipped) == 1 and not again.done


def test_optimization_study_claims_on_a_reduced_config(home):
    study = STUDIES.get("dd_optimization")
    cfg = study.load_config(None, None, ["seeds=[0]", "steps=[1e2,1e4,1e6]"])
    cfg = cfg.model_copy(update={"settings": cfg.settings[:4]})
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    import json

    rows = [json.loads(x) for x in (store.run_dir("dd_optimization", run_id) / "evals.jsonl").read_text().splitlines()]
    claims = {r["claim"]: r["verdict"] for r in rows if r["record"] == "claim"}
    assert sum(v == "PASS" for v in claims.values()) >= 4, claims
    assert {r["setting"] for r in rows if r["record"] == "setting"} >= {s.name for s in cfg.settings}


def test_mlp_study_runs_both_parts_and_reports(home, tmp_path):
    study = STUDIES.get("mlp_double_descent")
    cfg = study.load_config(None, None, [
        "modelwise.widths=[4,16,64]", "modelwise.steps=200", "modelwise.seeds=[0]", "modelwise.eval_every=100",
        "epochwise.widths=[64]", "epochwise.steps=200", "epochwise.eval_every=50"])
    store = Store()
    result, run_id = study.run(cfg, store, progress=False)
    assert result.ok
    info = store.manifest("mlp_double_descent", run_id)["info"]
    assert info["claims_total"] == 5 and info["modelwise_wall_s"] > 0
    html = build_report(tmp_path / "rep", "mlp_double_descent", store).read_text()
    assert "Two-layer networks on digits" in html and (tmp_path / "rep" / "mlp_epochwise.png").is_file()
